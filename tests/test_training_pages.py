"""Subject pages: create, upload (per-file reasons, then a worker's verdict; the task function is called
directly here), start training; privacy on every page."""
from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django_q.models import OrmQ
from PIL import Image

from generation.models import Generation
from imagesite.jobs import JobStatus
from training.models import PhotoStatus, Subject, SubjectPhoto, TrainingRun
from training.tasks import process_photo

from .factories import make_image

pytestmark = pytest.mark.django_db


def photo_file(name="p.jpg", color=(200, 40, 40), fmt="JPEG", size=(96, 80)) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/jpeg")


@pytest.fixture
def subject(owner):
    return Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")


def process_pending(subject) -> None:
    """What the default cluster's worker does after an upload (training.tasks.process_photo)."""
    for pk in subject.photos.filter(status=PhotoStatus.PENDING).values_list("pk", flat=True):
        process_photo(pk)


@pytest.fixture
def subject_with_photos(subject, owner_client):
    owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": [photo_file(f"{i}.jpg", (40 * i, 90, 200)) for i in range(3)]})
    process_pending(subject)
    assert subject.photos.ready().count() == 3
    return subject


def test_create_subject_suggests_a_rare_token(owner_client, owner):
    form = owner_client.get(reverse("subject-list")).context["form"]
    assert form["token"].value() == "sks"
    response = owner_client.post(reverse("subject-list"), {"name": "Rex", "class_noun": "Dog", "token": "sks"})
    subject = Subject.objects.get()
    assert response["Location"] == subject.get_absolute_url()
    assert (subject.owner, subject.class_noun, subject.token) == (owner, "dog", "sks")


@pytest.mark.parametrize("token, message", [("dog", "ordinary word"), ("a b", "lowercase"), ("x", "lowercase")])
def test_bad_tokens_are_refused(owner_client, token, message):
    response = owner_client.post(reverse("subject-list"), {"name": "Rex", "class_noun": "dog", "token": token})
    assert message in " ".join(response.context["form"].errors["token"])
    assert not Subject.objects.exists()


def test_token_must_not_clash_with_own_subjects_but_may_with_others(owner_client, owner, other_user, subject):
    response = owner_client.post(reverse("subject-list"), {"name": "Two", "class_noun": "dog", "token": "sks"})
    assert "already use" in " ".join(response.context["form"].errors["token"])
    Subject.objects.create(owner=other_user, name="Theirs", token="ohwx", class_noun="cat")
    owner_client.post(reverse("subject-list"), {"name": "Mine", "class_noun": "cat", "token": "ohwx"})
    assert Subject.objects.filter(owner=owner, token="ohwx").exists()


def test_upload_keeps_good_files_and_gives_each_bad_one_its_reason(owner_client, subject):
    files = [
        photo_file("good1.jpg"),
        SimpleUploadedFile("notes.jpg", b"just some text, not a photo", content_type="image/jpeg"),
        photo_file("good2.png", fmt="PNG"),
        SimpleUploadedFile("empty.jpg", b"", content_type="image/jpeg"),
    ]
    response = owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": files})
    assert response.status_code == 302 and response["Location"] == subject.get_absolute_url()  # post/redirect/get
    page = owner_client.get(response["Location"]).content.decode()
    assert "Received 2 photos; they are being checked." in page
    assert "notes.jpg: This file is not a JPEG, PNG or WebP image" in page and "empty.jpg: This file is empty." in page
    assert [p.original_name for p in subject.photos.all()] == ["good1.jpg", "good2.png"]
    assert page.count("Processing…") == 2 and 'hx-trigger="every 2s"' in page  # the list polls while any is pending
    process_pending(subject)
    for photo in subject.photos.all():
        assert photo.image.name.endswith(".jpg") and "good" not in photo.image.name  # our names, not theirs
        with photo.crop.open("rb") as f:
            assert Image.open(f).size == (64, 64)


def test_the_photo_list_shows_each_photos_state_and_stops_polling_when_done(owner_client, subject):
    data = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(data, "PNG")
    cut = SimpleUploadedFile("cut.png", data.getvalue()[:3000], content_type="image/png")  # the header is intact
    owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": [photo_file("good.jpg"), cut]})
    url = reverse("subject-detail", args=[subject.pk])
    partial = owner_client.get(url, HTTP_HX_REQUEST="true")
    assert [t.name for t in partial.templates][0] == "training/_photos.html"
    assert partial.content.decode().count("Processing…") == 2 and "every 2s" in partial.content.decode()
    process_pending(subject)
    good, bad = subject.photos.all()
    html = owner_client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "every 2s" not in html and "Processing…" not in html
    assert reverse("subject-photo-crop", args=[subject.pk, good.pk]) in html and f'name="caption_{good.pk}"' in html
    assert "incomplete or damaged" in html and f'name="caption_{bad.pk}"' not in html
    assert reverse("subject-photo-delete", args=[subject.pk, bad.pk]) in html  # a rejected one can be removed
    assert owner_client.get(reverse("subject-photo-crop", args=[subject.pk, bad.pk])).status_code == 404


def test_training_waits_while_photos_are_being_checked(owner_client, subject, django_capture_on_commit_callbacks):
    owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": [photo_file(f"{i}.jpg", (40 * i, 90, 200)) for i in range(3)]})
    form = owner_client.get(reverse("subject-detail", args=[subject.pk])).context["training_form"]
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, False)}
    data.update(method="lora", steps=5)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("subject-train", args=[subject.pk]), data)
    assert response.status_code == 400 and "3 photos are still being processed; try again in a moment." in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_crops_are_private(owner, other_client, subject_with_photos):
    from django.test import Client

    photo = subject_with_photos.photos.first()
    url = reverse("subject-photo-crop", args=[subject_with_photos.pk, photo.pk])
    assert other_client.get(url).status_code == 404
    assert Client().get(url).status_code == 302


def test_remove_photo_deletes_its_files(owner_client, subject_with_photos, django_capture_on_commit_callbacks):
    photo = subject_with_photos.photos.first()
    paths = [photo.image.path, photo.crop.path]
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("subject-photo-delete", args=[subject_with_photos.pk, photo.pk]))
    assert subject_with_photos.photos.count() == 2
    assert not any(__import__("os").path.exists(p) for p in paths)


def test_training_needs_three_photos(owner_client, subject, django_capture_on_commit_callbacks):
    owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": [photo_file()]})
    process_pending(subject)
    form = owner_client.get(reverse("subject-detail", args=[subject.pk])).context["training_form"]
    data = {name: field.initial for name, field in form.fields.items() if field.initial is not None}
    data["method"] = "lora"
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("subject-train", args=[subject.pk]), data)
    assert response.status_code == 400 and "at least 3 photos" in response.content.decode()
    assert not TrainingRun.objects.exists() and OrmQ.objects.count() == 0


def test_start_training_queues_on_the_training_cluster(owner_client, subject_with_photos, django_capture_on_commit_callbacks):
    form = owner_client.get(reverse("subject-detail", args=[subject_with_photos.pk])).context["training_form"]
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, False)}
    data.update(method="lora", steps=5)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("subject-train", args=[subject_with_photos.pk]), data)
    run = TrainingRun.objects.get()
    assert response["Location"] == run.get_absolute_url()
    assert run.status == JobStatus.QUEUED and run.options["steps"] == 5
    assert OrmQ.objects.get().key == "training"
    # photos are locked while it trains, and so are their captions
    photo = subject_with_photos.photos.first()
    owner_client.post(reverse("subject-photo-delete", args=[subject_with_photos.pk, photo.pk]))
    assert SubjectPhoto.objects.filter(pk=photo.pk).exists()
    response = owner_client.post(reverse("subject-photo-captions", args=[subject_with_photos.pk]), {f"caption_{photo.pk}": "a sks shape"})
    assert response.status_code == 400 and "can&#x27;t change while the subject is training" in response.content.decode()
    assert SubjectPhoto.objects.get(pk=photo.pk).caption == photo.caption


def test_captions_are_saved_together_and_prefill_the_prompt(owner_client, subject_with_photos):
    first, second, third = subject_with_photos.photos.all()
    third.caption = "a sks shape in the old caption"
    third.save()
    url = reverse("subject-photo-captions", args=[subject_with_photos.pk])
    response = owner_client.post(url, {f"caption_{first.pk}": "  a SKS shape on a  green background ", f"caption_{second.pk}": "", f"caption_{third.pk}": ""})
    assert response.status_code == 302
    assert [p.caption for p in subject_with_photos.photos.all()] == ["a SKS shape on a green background", "", ""]
    page = owner_client.get(reverse("subject-detail", args=[subject_with_photos.pk])).content.decode()
    assert "Saved the captions." in page and "a SKS shape on a green background</textarea>" in page
    assert 'placeholder="a photo of sks shape"' in page  # what a blank caption trains as
    # the first caption is the subject's example prompt: the generate form starts from it
    form = owner_client.get(reverse("generation-new") + f"?subject={subject_with_photos.pk}").context["form"]
    assert form.initial["prompt"] == "a SKS shape on a green background "
    # a photo added in another tab since the page was drawn sends no field and keeps its caption
    SubjectPhoto.objects.filter(pk=third.pk).update(caption="a sks shape on a blue background")
    owner_client.post(url, {f"caption_{first.pk}": "a sks shape", f"caption_{second.pk}": ""})
    assert [p.caption for p in subject_with_photos.photos.all()] == ["a sks shape", "", "a sks shape on a blue background"]


@pytest.mark.parametrize("caption, message", [
    ("a dog on a beach", "Name the subject with its token “sks”"),
    ("a sksx shape", "Name the subject with its token “sks”"),  # the token as a word, not inside one
    ("a sks shape " + "x" * 200, "200 characters"),
])
def test_a_bad_caption_is_refused_with_its_reason_and_nothing_is_saved(owner_client, subject_with_photos, caption, message):
    first, second, _ = subject_with_photos.photos.all()
    before = [p.caption for p in subject_with_photos.photos.all()]
    response = owner_client.post(reverse("subject-photo-captions", args=[subject_with_photos.pk]),
                                 {f"caption_{first.pk}": "a sks shape on a red background", f"caption_{second.pk}": caption})
    assert response.status_code == 400
    errors = response.context["captions_form"].errors
    assert list(errors) == [f"caption_{second.pk}"] and message in errors[f"caption_{second.pk}"][0]
    assert response.context["captions_form"][f"caption_{second.pk}"].value() == caption  # what was typed stays
    assert [p.caption for p in subject_with_photos.photos.all()] == before


def test_a_full_fine_tune_with_a_blank_rate_gets_the_full_fine_tunes_own_rate(owner_client, subject_with_photos, django_capture_on_commit_callbacks):
    from django.conf import settings

    from training.dreambooth.devices import default_options_for

    page = owner_client.get(reverse("subject-detail", args=[subject_with_photos.pk]))
    form = page.context["training_form"]
    assert form.fields["learning_rate"].initial is None  # blank: the chosen method's default, named in the field
    assert "Blank: the method&#x27;s default (LoRA 0.0003, full 0.0001)." in page.content.decode()
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, False)}
    data.update(method="full", steps=5)
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("subject-train", args=[subject_with_photos.pk]), data)
    run = TrainingRun.objects.get()
    assert run.method == "full" and "learning_rate" not in run.options
    # what the worker builds from the stored run (training.tasks)
    assert default_options_for(settings.IMAGESITE_MODEL, method=run.method, **run.options).learning_rate == 1e-4


def test_bad_training_options_get_field_errors(owner_client, subject_with_photos):
    response = owner_client.post(reverse("subject-train", args=[subject_with_photos.pk]), {"method": "lora", "steps": 0, "learning_rate": 1, "lora_rank": 0})
    errors = response.context["training_form"].errors
    assert {"steps", "learning_rate", "lora_rank"} <= set(errors)
    assert not TrainingRun.objects.exists()


def _subject_urls(subject, photo, run):
    return {
        "subject-detail": (reverse("subject-detail", args=[subject.pk]), "get"),
        "subject-photo-upload": (reverse("subject-photo-upload", args=[subject.pk]), "post"),
        "subject-photo-delete": (reverse("subject-photo-delete", args=[subject.pk, photo.pk]), "post"),
        "subject-photo-crop": (reverse("subject-photo-crop", args=[subject.pk, photo.pk]), "get"),
        "subject-photo-captions": (reverse("subject-photo-captions", args=[subject.pk]), "post"),
        "subject-train": (reverse("subject-train", args=[subject.pk]), "post"),
        "subject-delete": (reverse("subject-delete", args=[subject.pk]), "post"),
        "training-run-detail": (reverse("training-run-detail", args=[run.pk]), "get"),
        "training-run-cancel": (reverse("training-run-cancel", args=[run.pk]), "post"),
        "training-run-checkpoint": (reverse("training-run-checkpoint", args=[run.pk]), "get"),
        "training-run-token-embedding": (reverse("training-run-token-embedding", args=[run.pk]), "get"),
    }


NAMES = ["subject-detail", "subject-photo-upload", "subject-photo-delete", "subject-photo-crop", "subject-photo-captions", "subject-train", "subject-delete", "training-run-detail", "training-run-cancel", "training-run-checkpoint", "training-run-token-embedding"]


@pytest.fixture
def subject_setup(subject_with_photos):
    run = TrainingRun.objects.create(subject=subject_with_photos, status=JobStatus.SUCCEEDED)
    return subject_with_photos, subject_with_photos.photos.first(), run


@pytest.mark.parametrize("name", NAMES)
def test_other_user_gets_404_on_subject_pages(name, subject_setup, other_client):
    url, method = _subject_urls(*subject_setup)[name]
    assert getattr(other_client, method)(url).status_code == 404
    assert Subject.objects.count() == 1 and SubjectPhoto.objects.count() == 3 and TrainingRun.objects.get().status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("name", NAMES)
def test_anonymous_goes_to_login_on_subject_pages(name, subject_setup):
    from django.test import Client

    url, method = _subject_urls(*subject_setup)[name]
    assert getattr(Client(), method)(url)["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_method_on_subject_pages(name, subject_setup, owner_client):
    url, method = _subject_urls(*subject_setup)[name]
    assert (owner_client.post if method == "get" else owner_client.get)(url).status_code == 405


def test_other_user_cannot_use_the_subject_by_id_in_the_form(subject_setup, other_client, django_capture_on_commit_callbacks):
    subject = subject_setup[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = other_client.post(reverse("generation-new"), {
            "prompt": "a photo of sks shape", "steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64,
            "scheduler": "dpmpp_2m", "num_images": 1, "subject": subject.pk,
        })
    assert "subject" in response.context["form"].errors
    assert not Generation.objects.exists()


def test_subject_prompt_must_contain_the_token(subject_setup, owner_client):
    subject = subject_setup[0]
    response = owner_client.post(reverse("generation-new"), {
        "prompt": "a red circle", "steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64,
        "scheduler": "dpmpp_2m", "num_images": 1, "subject": subject.pk,
    })
    assert "sks" in " ".join(response.context["form"].errors["prompt"])


def test_delete_subject_deletes_files_but_keeps_images_marked(owner, owner_client, subject_setup, media_dir, django_capture_on_commit_callbacks):
    subject, photo, run = subject_setup
    image = make_image(owner, subject=subject, subject_name=subject.name)
    photo_path = photo.image.path
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("subject-delete", args=[subject.pk]))
    assert not Subject.objects.exists() and not SubjectPhoto.objects.exists() and not TrainingRun.objects.exists()
    assert not __import__("os").path.exists(photo_path)
    image.generation.refresh_from_db()
    assert image.generation.subject_deleted
    assert "subject deleted" in owner_client.get(reverse("image-detail", args=[image.pk])).content.decode()


# --- issue 18: post/redirect/get, the same file twice, one help text, a confirmed Remove --------------
def test_every_upload_outcome_redirects_with_its_message(owner_client, owner, subject):
    from imagesite.models import UserLimits

    url = reverse("subject-photo-upload", args=[subject.pk])
    response = owner_client.post(url, {})
    assert response.status_code == 302 and response["Location"] == subject.get_absolute_url()
    assert "Choose at least one photo." in owner_client.get(response["Location"]).content.decode()
    UserLimits.objects.create(user=owner, uploads_per_hour=1)
    response = owner_client.post(url, {"photos": [photo_file("a.jpg"), photo_file("b.jpg", (1, 2, 3))]})
    assert response.status_code == 302  # a refusal too: reloading the page must not send the files again
    assert "You may upload 1 photos per hour" in owner_client.get(response["Location"]).content.decode()
    assert not subject.photos.exists()


def test_the_same_file_twice_in_one_upload_is_kept_once(owner_client, subject):
    same = photo_file("one.jpg").read()
    files = [SimpleUploadedFile("one.jpg", same, content_type="image/jpeg"), SimpleUploadedFile("copy-of-one.jpg", same, content_type="image/jpeg"),
             photo_file("two.jpg", (10, 200, 10))]
    response = owner_client.post(reverse("subject-photo-upload", args=[subject.pk]), {"photos": files}, follow=True)
    page = response.content.decode()
    assert "Received 2 photos" in page and "copy-of-one.jpg: already uploaded" in page
    assert [p.original_name for p in subject.photos.all()] == ["one.jpg", "two.jpg"]


def test_the_new_subject_form_explains_the_token_once(owner_client):
    page = owner_client.get(reverse("subject-list")).content.decode()
    assert page.count("rare word") == 1 and "a photo of sks person" in page


def test_remove_asks_for_confirmation_like_the_other_deletes(owner_client, subject_with_photos):
    page = owner_client.get(subject_with_photos.get_absolute_url()).content.decode()
    assert page.count("onsubmit=\"return confirm('Remove this photo?')\"") == 3
