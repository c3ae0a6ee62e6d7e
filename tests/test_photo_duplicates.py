"""The same photo uploaded to a subject again, in a later upload, is noticed by its content hash:
skipped with "already uploaded to this subject; skipped.", its stored upload deleted, for the page
and the API alike (training.services.add_photos, under the owner's lock)."""
from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from training import services
from training.models import PhotoStatus, Subject
from training.tasks import process_photo

from .api_support import owner_api  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def jpeg(color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/jpeg")


@pytest.fixture
def subject(owner):
    return Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")


def stored_uploads(media_dir, owner) -> list:
    return sorted((media_dir / "photos" / str(owner.pk)).glob("*.upload"))


def test_a_later_upload_of_the_same_photo_is_skipped_on_the_page(owner, owner_client, subject, media_dir):
    url = reverse("subject-photo-upload", args=[subject.pk])
    owner_client.post(url, {"photos": [upload("cat.jpg", jpeg())]})
    before = stored_uploads(media_dir, owner)
    response = owner_client.post(url, {"photos": [upload("cat-again.jpg", jpeg()), upload("new.jpg", jpeg((10, 200, 10)))]}, follow=True)
    page = response.content.decode()
    assert "cat-again.jpg: already uploaded to this subject; skipped." in page and "Received 1 photo;" in page
    assert [p.original_name for p in subject.photos.all()] == ["cat.jpg", "new.jpg"]
    assert len(stored_uploads(media_dir, owner)) == len(before) + 1  # the skipped copy's file is gone


def test_it_is_noticed_after_processing_too(owner, subject):
    first = services.add_photos(subject=subject, files=[upload("a.jpg", jpeg())]).accepted[0]
    process_photo(first.pk)
    first.refresh_from_db()
    assert first.status == PhotoStatus.READY and len(first.content_sha256) == 64
    outcome = services.add_photos(subject=subject, files=[upload("b.jpg", jpeg())])
    assert outcome.accepted == [] and outcome.rejected == [("b.jpg", "already uploaded to this subject; skipped.")]


def test_after_removing_it_or_on_another_subject_it_is_welcome(owner, subject):
    photo = services.add_photos(subject=subject, files=[upload("a.jpg", jpeg())]).accepted[0]
    other = Subject.objects.create(owner=owner, name="Other", token="zwx", class_noun="shape")
    assert len(services.add_photos(subject=other, files=[upload("a.jpg", jpeg())]).accepted) == 1
    services.remove_photo(photo=photo)
    assert len(services.add_photos(subject=subject, files=[upload("a.jpg", jpeg())]).accepted) == 1


def test_a_rejected_photo_does_not_block_a_new_try(owner, subject):
    photo = services.add_photos(subject=subject, files=[upload("a.jpg", jpeg())]).accepted[0]
    photo.reject("could not be read")
    assert len(services.add_photos(subject=subject, files=[upload("a.jpg", jpeg())]).accepted) == 1


def test_the_service_keeps_two_copies_in_one_call_once(owner, subject):
    outcome = services.add_photos(subject=subject, files=[upload("a.jpg", jpeg()), upload("b.jpg", jpeg())])
    assert [p.original_name for p in outcome.accepted] == ["a.jpg"] and outcome.rejected[0][0] == "b.jpg"


def test_the_api_says_so_too(owner, owner_api, subject, media_dir):
    url = f"/api/v1/subjects/{subject.pk}/photos/"
    before = len(stored_uploads(media_dir, owner))
    assert owner_api.post(url, {"photos": [upload("a.jpg", jpeg())]}, format="multipart").status_code == 202
    response = owner_api.post(url, {"photos": [upload("a2.jpg", jpeg()), upload("c.jpg", jpeg((0, 0, 250)))]}, format="multipart")
    assert response.status_code == 202
    body = response.json()
    assert body["rejected"] == [{"name": "a2.jpg", "reason": "already uploaded to this subject; skipped."}]
    response = owner_api.post(url, {"photos": [upload("a3.jpg", jpeg())]}, format="multipart")
    assert response.status_code == 400 and "already uploaded to this subject" in response.content.decode()
    assert subject.photos.count() == 2 and len(stored_uploads(media_dir, owner)) == before + 2
