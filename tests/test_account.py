"""Owning your data: a user deletes their own account after their password, and nothing of theirs is
left in the database or the media folder; staff do the same from the admin."""
from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from api.models import ApiToken, WebhookDelivery, WebhookSettings
from generation.models import GeneratedImage, Generation
from imagesite.jobs import JobStatus
from imagesite.models import UserLimits
from training import services as training_services
from training.models import Subject, SubjectPhoto, TrainingRun
from training.tasks import process_photo

from .conftest import PASSWORD
from .factories import make_generation, make_image, png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def media(settings, tmp_path):
    """A media folder of this test's own, so "nothing left" means nothing (the shared one holds
    other tests' files)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _everything_of(user) -> None:
    """A generation with images, a running one, a subject with processed photos and a run with a
    checkpoint in its folder, a token, webhook settings and a delivery, limits, a login record."""
    from axes.models import AccessLog

    make_image(user)
    make_image(user, prompt="a second one")
    make_generation(user, status=JobStatus.RUNNING)
    subject = Subject.objects.create(owner=user, name="Checkers", token="sks", class_noun="shape")
    files = [SimpleUploadedFile(f"{i}.png", png_bytes((40 * i, 90, 200), (96, 80)), content_type="image/png") for i in range(3)]
    for photo in training_services.add_photos(subject=subject, files=files).accepted:
        process_photo(photo.pk)
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, files_dir=f"{subject.files_prefix()}/runs/1", checkpoint="x")
    default_storage.save(f"{run.files_dir}/pytorch_lora_weights.safetensors", ContentFile(b"weights"))
    default_storage.save(f"{subject.files_prefix()}/class_images/0.png", ContentFile(png_bytes()))
    ApiToken.create_for(user, "laptop")
    WebhookSettings.for_user(user)
    WebhookDelivery.objects.create(owner=user, event="generation.succeeded", url="https://example.com/hook", payload={})
    UserLimits.objects.create(user=user, generations_per_hour=5)
    AccessLog.objects.create(username=user.username, ip_address="127.0.0.1", user_agent="test")


def _rows_of(user_id: int, username: str) -> dict[str, int]:
    """Rows that point at the user by any foreign key, plus the ones that name them."""
    from axes.models import AccessAttempt, AccessLog

    found = {}
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if getattr(field, "many_to_one", False) or getattr(field, "one_to_one", False):
                if field.concrete and field.related_model is get_user_model():
                    count = model.objects.filter(**{field.name: user_id}).count()
                    if count:
                        found[f"{model.__name__}.{field.name}"] = count
    found.update({name: count for name, count in (
        ("user", get_user_model().objects.filter(pk=user_id).count()),
        ("images", GeneratedImage.objects.filter(generation__owner_id=user_id).count()),
        ("photos", SubjectPhoto.objects.filter(subject__owner_id=user_id).count()),
        ("runs", TrainingRun.objects.filter(subject__owner_id=user_id).count()),
        ("axes", AccessLog.objects.filter(username=username).count() + AccessAttempt.objects.filter(username=username).count()),
    ) if count})
    return found


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_wrong_password_deletes_nothing(owner, owner_client, media):
    _everything_of(owner)
    response = owner_client.post(reverse("account-delete"), {"password": "not-it"})
    assert response.status_code == 400 and "That is not your password; nothing was deleted." in response.content.decode()
    assert get_user_model().objects.filter(pk=owner.pk).exists() and Generation.objects.filter(owner=owner).count() == 3


def test_wrong_passwords_count_towards_the_login_lock_out(owner, owner_client, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        owner_client.post(reverse("account-delete"), {"password": "a-guess"})
    response = owner_client.post(reverse("account-delete"), {"password": PASSWORD})  # the right one, too late
    assert response.status_code == 429 and "Too many attempts" in response.content.decode()  # axes' lock-out page
    assert get_user_model().objects.filter(pk=owner.pk).exists()


def test_deleting_your_account_leaves_nothing_of_yours(owner, other_user, owner_client, media, django_capture_on_commit_callbacks):
    _everything_of(owner)
    theirs = make_image(other_user)
    other_session = Client()
    other_session.force_login(owner)  # signed in on another browser too
    before = _files(media)
    assert any(name.startswith(f"images/{owner.pk}/") for name in before) and any(name.startswith(f"subjects/{owner.pk}/") for name in before)
    assert "Delete account" in owner_client.get(reverse("password_change")).content.decode()
    assert owner_client.get(reverse("account-delete")).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("account-delete"), {"password": PASSWORD})

    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert "Deleted the account owner" in owner_client.get(reverse("login")).content.decode()
    assert _rows_of(owner.pk, "owner") == {}
    assert not any(s.get_decoded().get("_auth_user_id") == str(owner.pk) for s in Session.objects.all())
    assert other_session.get(reverse("gallery")).status_code == 302  # signed out there too
    left = _files(media)
    assert left == sorted([theirs.file.name, theirs.thumbnail.name])  # only the other user's files
    assert sorted(p.name for p in media.rglob("*") if p.is_dir() and p.name == str(owner.pk)) == []  # no empty folders of theirs


def test_account_pages_need_a_login_and_the_right_method(owner_client):
    assert Client().get(reverse("account-delete")).status_code == 302
    assert owner_client.put(reverse("account-delete")).status_code == 405


def test_staff_delete_a_user_with_everything_from_the_admin(owner, django_user_model, media, django_capture_on_commit_callbacks):
    _everything_of(owner)
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("operator", password="x-long-enough-passphrase"))
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(reverse("admin:auth_user_changelist"), {"action": "delete_selected", "_selected_action": [owner.pk], "post": "yes"})
    assert response.status_code == 302
    assert _rows_of(owner.pk, "owner") == {} and _files(media) == []
