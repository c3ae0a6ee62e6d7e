"""/api/v1/subjects/ and /api/v1/training-runs/: create, upload (per-file result, processed later by
a worker: here the task function is called directly), photos and crops, start training, status,
checkpoint download, cancel, delete; generating with a subject."""
from __future__ import annotations

import io

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django_q.models import OrmQ
from PIL import Image

from imagesite.models import UserLimits
from generation.models import Generation
from imagesite.jobs import JobStatus
from training.checkpoint_names import TOKEN_EMBEDDING_NAME
from training.models import PhotoStatus, Subject, SubjectPhoto, TrainingRun
from training.tasks import process_photo

from .api_support import anon_api, assert_error, other_api, owner_api  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

URL = "/api/v1/subjects/"


def upload(name: str, image: Image.Image, fmt: str = "PNG") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/jpeg")


def photo_file(name: str = "p.jpg", color=(200, 40, 40), size=(96, 80), fmt: str = "JPEG") -> SimpleUploadedFile:
    return upload(name, Image.new("RGB", size, color), fmt)


@pytest.fixture
def subject(owner) -> Subject:
    return Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")


def process_pending(subject: Subject) -> None:
    """What the default cluster's worker does after an upload (training.tasks.process_photo)."""
    for pk in subject.photos.filter(status=PhotoStatus.PENDING).values_list("pk", flat=True):
        process_photo(pk)


@pytest.fixture
def subject_with_photos(subject, owner_api) -> Subject:
    files = [photo_file(f"{i}.jpg", (40 * i, 90, 200)) for i in range(3)]
    assert owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart").status_code == 202
    process_pending(subject)
    return subject


def _trained_run(subject: Subject) -> TrainingRun:
    """A finished run with stand-in LoRA and token embedding files (training itself is the worker test's job)."""
    from django.core.files.storage import default_storage

    folder = f"{subject.files_prefix()}/runs/done"
    name = default_storage.save(f"{folder}/lora.safetensors", ContentFile(b"not really a lora"))
    default_storage.save(f"{folder}/{TOKEN_EMBEDDING_NAME}", ContentFile(b"not really an embedding"))
    return TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint=name, checkpoint_size=17, files_dir=folder)


# --- subjects ----------------------------------------------------------------------------------------
def test_create_suggests_a_token_and_returns_201(owner, owner_api):
    response = owner_api.post(URL, {"name": "Rex", "class_noun": "Dog"}, format="json")
    assert response.status_code == 201
    body = response.json()
    subject = Subject.objects.get()
    assert subject.owner == owner and body["token"] == "sks" and body["class_noun"] == "dog"
    assert body["state"] == "untrained" and body["photos_count"] == 0 and response["Location"] == body["url"]


@pytest.mark.parametrize(
    "data, field",
    [({"class_noun": "dog"}, "name"), ({"name": "Rex"}, "class_noun"), ({"name": "Rex", "class_noun": "dog", "token": "dog"}, "token"),
     ({"name": "Rex", "class_noun": "dog", "token": "a b"}, "token"), ({"name": "Rex", "class_noun": "123"}, "class_noun")],
)
def test_create_bad_input_is_400(owner_api, data, field):
    assert_error(owner_api.post(URL, data, format="json"), 400, field)
    assert not Subject.objects.exists()


def test_create_refuses_my_own_duplicate_token_and_name(owner_api, subject):
    assert_error(owner_api.post(URL, {"name": "Other", "class_noun": "dog", "token": "sks"}, format="json"), 409, "token")
    assert_error(owner_api.post(URL, {"name": "checkers", "class_noun": "dog", "token": "ohwx"}, format="json"), 409, "name")


def test_list_and_retrieve_only_mine(owner_api, subject, other_user):
    Subject.objects.create(owner=other_user, name="Theirs", token="ohwx", class_noun="cat")
    body = owner_api.get(URL).json()
    assert [s["id"] for s in body["results"]] == [subject.pk]
    assert owner_api.get(f"{URL}{subject.pk}/").json()["prompt_example"] == "a photo of sks shape"


def test_delete_subject_cancels_its_run_and_keeps_images(owner_api, subject_with_photos, django_capture_on_commit_callbacks):
    run = TrainingRun.objects.create(subject=subject_with_photos)
    Generation.objects.create(owner=subject_with_photos.owner, prompt="sks", seed=1, steps=1, guidance_scale=1, width=64, height=64,
                              scheduler="ddim", subject=subject_with_photos, subject_name="Checkers")
    with django_capture_on_commit_callbacks(execute=True):
        assert owner_api.delete(f"{URL}{subject_with_photos.pk}/").status_code == 204
    assert not Subject.objects.exists() and not SubjectPhoto.objects.exists() and not TrainingRun.objects.filter(pk=run.pk).exists()
    assert Generation.objects.get().subject_name == "Checkers"


# --- photos --------------------------------------------------------------------------------------------
def test_upload_is_202_with_pending_photos_then_a_worker_makes_them_ready(owner_api, subject, django_capture_on_commit_callbacks):
    files = [photo_file("good.jpg"), SimpleUploadedFile("notes.jpg", b"just text", content_type="image/jpeg"), photo_file("good2.png", fmt="PNG")]
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart")
    assert response.status_code == 202
    body = response.json()
    assert [p["original_name"] for p in body["accepted"]] == ["good.jpg", "good2.png"]
    assert all(p["status"] == "pending" and p["image_url"] is None and p["crop_url"] is None for p in body["accepted"])
    assert [r["name"] for r in body["rejected"]] == ["notes.jpg"] and body["rejected"][0]["reason"]
    assert subject.photos.count() == 2 and OrmQ.objects.count() == 2  # one task per photo, default cluster
    assert all(task.key == "imagesite" for task in OrmQ.objects.all())
    pending = body["accepted"][0]
    assert_error(owner_api.get(f"{pending['url']}crop/"), 404)  # nothing to show yet
    assert_error(owner_api.patch(pending["url"], {"caption": "a sks shape"}, format="json"), 400, "caption")
    process_pending(subject)
    photos = owner_api.get(f"{URL}{subject.pk}/photos/").json()
    assert [(p["status"], p["reason"]) for p in photos] == [("ready", ""), ("ready", "")]
    assert all(p["image_url"] and p["crop_url"] for p in photos)


def test_a_photo_the_worker_rejects_shows_its_reason(owner_api, subject):
    data = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(data, "PNG")
    cut = SimpleUploadedFile("cut.png", data.getvalue()[:3000], content_type="image/png")  # the header is intact
    [accepted] = owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": [cut]}, format="multipart").json()["accepted"]
    process_pending(subject)
    photo = owner_api.get(accepted["url"]).json()
    assert photo["status"] == "rejected" and "incomplete or damaged" in photo["reason"] and photo["crop_url"] is None
    assert owner_api.delete(accepted["url"]).status_code == 204


@pytest.fixture(scope="session")
def forty_megapixel_pngs() -> list[bytes]:
    """30 single-colour 6320×6320 PNGs (40 MP each, just under the limit), distinct colours. Palette
    PNGs: a few KB each to make and send, yet each decodes to 40 MP like any other."""
    out = []
    for i in range(30):
        img = Image.new("P", (6320, 6320), 0)
        img.putpalette([i * 8, 255 - i * 8, 90])
        buffer = io.BytesIO()
        img.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def test_thirty_40_megapixel_photos_are_taken_in_without_decoding_then_processed(
    owner_api, subject, forty_megapixel_pngs, settings, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    from training import photos

    settings.MEDIA_ROOT = tmp_path  # this test's own, so any orphan file shows

    def no_decode(img):
        raise AssertionError("the request decoded a photo")

    monkeypatch.setattr(photos, "_decode", no_decode)
    files = [SimpleUploadedFile(f"{i}.png", data, content_type="image/png") for i, data in enumerate(forty_megapixel_pngs)]
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart")
    assert response.status_code == 202, response.content[:300]
    body = response.json()
    assert len(body["accepted"]) == 30 and body["rejected"] == []
    assert all(p["status"] == "pending" and p["crop_url"] is None and (p["width"], p["height"]) == (6320, 6320) for p in body["accepted"])
    assert all(not photo.crop and not photo.image for photo in subject.photos.all())  # no crop exists yet
    assert OrmQ.objects.count() == 30
    assert stored_files(tmp_path) == referenced_files() == {photo.upload.name for photo in subject.photos.all()}

    # the cap is full: one more is refused and nothing of it is stored
    body = assert_error(owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": [photo_file("31.jpg")]}, format="multipart"), 400, "photos")
    assert "at most 30 photos" in body["errors"]["photos"][0] and subject.photos.count() == 30

    monkeypatch.undo()  # the worker decodes
    process_pending(subject)
    assert set(subject.photos.values_list("status", flat=True)) == {PhotoStatus.READY}
    assert stored_files(tmp_path) == referenced_files() == {name for photo in subject.photos.all() for name in (photo.image.name, photo.crop.name)}


def stored_files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def referenced_files() -> set[str]:
    return {name for row in SubjectPhoto.objects.values_list("upload", "image", "crop") for name in row if name}


def test_upload_with_only_bad_files_is_400_naming_each(owner_api, subject):
    files = [SimpleUploadedFile("a.jpg", b"", content_type="image/jpeg"), SimpleUploadedFile("b.svg", b"<svg/>", content_type="image/svg+xml")]
    body = assert_error(owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart"), 400, "photos")
    assert [m.split(":")[0] for m in body["errors"]["photos"]] == ["a.jpg", "b.svg"]
    assert not subject.photos.exists()


def test_upload_without_files_is_400(owner_api, subject):
    assert_error(owner_api.post(f"{URL}{subject.pk}/photos/", {}, format="multipart"), 400, "photos")
    assert_error(owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": "x"}, format="json"), 415)


def test_photos_list_and_files(owner_api, subject_with_photos):
    photos = owner_api.get(f"{URL}{subject_with_photos.pk}/photos/").json()
    assert len(photos) == 3
    photo = photos[0]
    assert owner_api.get(photo["url"]).json()["id"] == photo["id"]
    crop = owner_api.get(photo["crop_url"])
    assert crop.status_code == 200 and crop["Content-Type"] == "image/png"
    image = owner_api.get(photo["image_url"], HTTP_ACCEPT="image/jpeg")
    assert image.status_code == 200 and image["Content-Type"] == "image/jpeg"


def test_remove_a_photo_but_not_while_training(owner_api, subject_with_photos):
    first, second = subject_with_photos.photos.all()[:2]
    assert owner_api.delete(f"{URL}{subject_with_photos.pk}/photos/{first.pk}/").status_code == 204
    TrainingRun.objects.create(subject=subject_with_photos)
    body = assert_error(owner_api.delete(f"{URL}{subject_with_photos.pk}/photos/{second.pk}/"), 409, "non_field_errors")
    assert "training" in body["errors"]["non_field_errors"][0]
    assert subject_with_photos.photos.count() == 2


def test_uploads_get_a_caption_suggested_from_a_background_the_model_knows(owner_api, subject):
    # The demo model lists its plain background colours (imagesite.json "caption_backgrounds").
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
    files = [photo_file("green.png", (30, 170, 50), fmt="PNG"), photo_file("orange.png", (250, 140, 20), fmt="PNG"), upload("noise.png", noise)]
    owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart")
    process_pending(subject)
    assert [p["caption"] for p in owner_api.get(f"{URL}{subject.pk}/photos/").json()] == ["a sks shape on a green background", "a sks shape on an orange background", ""]


def test_caption_a_photo_and_it_becomes_the_example_prompt(owner_api, subject_with_photos):
    subject_url = f"{URL}{subject_with_photos.pk}/"
    for photo in subject_with_photos.photos.all():  # start from no captions at all
        assert owner_api.patch(f"{subject_url}photos/{photo.pk}/", {"caption": ""}, format="json").json()["caption"] == ""
    assert owner_api.get(subject_url).json()["prompt_example"] == "a photo of sks shape"
    second = subject_with_photos.photos.all()[1]
    body = owner_api.patch(f"{subject_url}photos/{second.pk}/", {"caption": " a sks shape on a  green background"}, format="json").json()
    assert body["id"] == second.pk and body["caption"] == "a sks shape on a green background"
    assert owner_api.get(subject_url).json()["prompt_example"] == "a sks shape on a green background"
    assert [p["caption"] for p in owner_api.get(f"{subject_url}photos/").json()] == ["", "a sks shape on a green background", ""]


@pytest.mark.parametrize("data, message", [
    ({"caption": "a dog on a beach"}, "token “sks”"),
    ({"caption": "a sks shape " + "x" * 200}, "200 characters"),
    ({}, "required"),
    ({"caption": None}, "null"),
])
def test_a_bad_caption_is_400_on_the_caption_field(owner_api, subject_with_photos, data, message):
    photo = subject_with_photos.photos.first()
    body = assert_error(owner_api.patch(f"{URL}{subject_with_photos.pk}/photos/{photo.pk}/", data, format="json"), 400, "caption")
    assert message in body["errors"]["caption"][0]
    assert SubjectPhoto.objects.get(pk=photo.pk).caption == photo.caption


def test_no_captioning_while_training(owner_api, subject_with_photos):
    photo = subject_with_photos.photos.first()
    TrainingRun.objects.create(subject=subject_with_photos)
    body = assert_error(owner_api.patch(f"{URL}{subject_with_photos.pk}/photos/{photo.pk}/", {"caption": "a sks shape"}, format="json"), 409, "non_field_errors")
    assert "training" in body["errors"]["non_field_errors"][0] and SubjectPhoto.objects.get(pk=photo.pk).caption == photo.caption


def test_upload_throttle(owner, owner_api, subject):
    UserLimits.objects.create(user=owner, uploads_per_hour=1)
    assert owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": [photo_file()]}, format="multipart").status_code == 202
    # another photo (the same one again would be skipped as already uploaded before any quota)
    response = owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": [photo_file(color=(1, 2, 3))]}, format="multipart")
    assert_error(response, 429)
    assert subject.photos.count() == 1 and referenced_files() == {subject.photos.get().upload.name}
    assert int(response["Retry-After"]) > 3000
    assert owner_api.get(f"{URL}{subject.pk}/photos/").status_code == 200  # reading is not limited


# --- training --------------------------------------------------------------------------------------
def test_a_full_fine_tune_stores_the_same_options_from_the_page_and_the_api(owner_api, owner_client, subject_with_photos):
    """{"method": "full"} through the API and the page with nothing else changed store the same (no
    LoRA defaults filled in), so the worker trains at the full fine-tune's own rate."""
    from training.dreambooth.devices import default_options_for
    from training.forms import TrainingForm

    assert owner_api.post(f"{URL}{subject_with_photos.pk}/train/", {"method": "full"}, format="json").status_code == 202
    from_api = TrainingRun.objects.get()
    TrainingRun.objects.filter(pk=from_api.pk).update(status=JobStatus.CANCELED)
    page = {name: field.initial for name, field in TrainingForm().fields.items() if field.initial not in (None, False)}
    assert owner_client.post(f"/subjects/{subject_with_photos.pk}/train/", {**page, "method": "full"}).status_code == 302
    from_page = TrainingRun.objects.exclude(pk=from_api.pk).get()
    assert from_api.method == from_page.method == "full"
    assert from_api.options == from_page.options == {}
    full, lora = (default_options_for(settings.IMAGESITE_MODEL, method=m).learning_rate for m in ("full", "lora"))
    assert default_options_for(settings.IMAGESITE_MODEL, method="full", **from_page.options).learning_rate == full != lora


def test_start_training_returns_202_and_queues_on_the_training_cluster(owner_api, subject_with_photos, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_api.post(f"{URL}{subject_with_photos.pk}/train/", {"steps": 5, "prior_preservation": False}, format="json")
    assert response.status_code == 202
    body = response.json()
    run = TrainingRun.objects.get()
    assert body["id"] == run.pk and body["status"] == "queued" and body["method"] == "lora"
    assert run.options["steps"] == 5 and run.options["prior_preservation"] is False
    assert OrmQ.objects.get().key == "training"
    assert owner_api.get(f"{URL}{subject_with_photos.pk}/").json()["state"] == "training"
    # a second start while it trains is refused
    assert_error(owner_api.post(f"{URL}{subject_with_photos.pk}/train/", {}, format="json"), 409, "non_field_errors")


@pytest.mark.parametrize(
    "data, field",
    [({"steps": 0}, "steps"), ({"learning_rate": 1}, "learning_rate"), ({"lora_rank": 0}, "lora_rank"), ({"method": "magic"}, "method"),
     ({"prior_preservation": True, "num_class_images": 0}, "num_class_images"), ({"webhook_url": "http://10.0.0.1/"}, "webhook_url")],
)
def test_bad_training_options_are_400(owner_api, subject_with_photos, data, field, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert_error(owner_api.post(f"{URL}{subject_with_photos.pk}/train/", data, format="json"), 400, field)
    assert not TrainingRun.objects.exists()


def test_training_needs_photos(owner_api, subject):
    body = assert_error(owner_api.post(f"{URL}{subject.pk}/train/", {}, format="json"), 409, "non_field_errors")
    assert "at least 3 photos" in body["errors"]["non_field_errors"][0]


def test_training_waits_while_photos_are_processed(owner_api, subject):
    files = [photo_file(f"{i}.jpg", (40 * i, 90, 200)) for i in range(3)]
    owner_api.post(f"{URL}{subject.pk}/photos/", {"photos": files}, format="multipart")
    body = assert_error(owner_api.post(f"{URL}{subject.pk}/train/", {}, format="json"), 409, "non_field_errors")
    assert body["errors"]["non_field_errors"] == ["3 photos are still being processed; try again in a moment."]
    assert not TrainingRun.objects.exists()


def test_training_throttle(owner, owner_api, subject_with_photos):
    UserLimits.objects.create(user=owner, trainings_per_day=1)
    TrainingRun.objects.create(subject=subject_with_photos, status=JobStatus.FAILED)
    assert_error(owner_api.post(f"{URL}{subject_with_photos.pk}/train/", {}, format="json"), 429)


def test_run_status_list_cancel_and_checkpoint(owner_api, subject_with_photos):
    done = _trained_run(subject_with_photos)
    queued = TrainingRun.objects.create(subject=subject_with_photos)
    body = owner_api.get("/api/v1/training-runs/").json()
    assert [r["id"] for r in body["results"]] == [queued.pk, done.pk]
    assert [r["id"] for r in owner_api.get("/api/v1/training-runs/", {"status": "succeeded"}).json()["results"]] == [done.pk]
    assert owner_api.get("/api/v1/training-runs/", {"subject": subject_with_photos.pk + 1}).json()["count"] == 0
    assert_error(owner_api.get("/api/v1/training-runs/", {"subject": "x"}), 400, "subject")
    run = owner_api.get(f"/api/v1/training-runs/{done.pk}/").json()
    assert run["progress"]["percent"] == 0 and run["checkpoint_size"] == 17
    download = owner_api.get(run["checkpoint_url"])
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"not really a lora"
    assert download["Content-Disposition"] == 'attachment; filename="sks.safetensors"'
    embedding = owner_api.get(run["token_embedding_url"])
    assert embedding.status_code == 200 and b"".join(embedding.streaming_content) == b"not really an embedding"
    assert embedding["Content-Disposition"] == 'attachment; filename="sks-embedding.safetensors"'
    queued_body = owner_api.get(f"/api/v1/training-runs/{queued.pk}/").json()
    assert queued_body["checkpoint_url"] is None and queued_body["token_embedding_url"] is None
    assert_error(owner_api.get(f"/api/v1/training-runs/{queued.pk}/checkpoint/"), 404)
    assert_error(owner_api.get(f"/api/v1/training-runs/{queued.pk}/token-embedding/"), 404)
    assert owner_api.post(f"/api/v1/training-runs/{queued.pk}/cancel/").json()["status"] == "canceled"
    assert owner_api.get(f"{URL}{subject_with_photos.pk}/").json()["state"] == "trained"


# --- generating with a subject ------------------------------------------------------------------------
def test_generate_with_my_trained_subject(owner_api, subject_with_photos):
    _trained_run(subject_with_photos)
    body = owner_api.post("/api/v1/generations/", {"prompt": "a sks shape on red", "subject": subject_with_photos.pk}, format="json").json()
    assert body["subject"] == subject_with_photos.pk and body["subject_name"] == "Checkers"
    assert_error(owner_api.post("/api/v1/generations/", {"prompt": "a shape", "subject": subject_with_photos.pk}, format="json"), 400, "prompt")


def test_untrained_or_other_users_subject_is_refused(owner_api, other_user, subject):
    assert_error(owner_api.post("/api/v1/generations/", {"prompt": "a sks shape", "subject": subject.pk}, format="json"), 400, "subject")
    theirs = Subject.objects.create(owner=other_user, name="T", token="ohwx", class_noun="cat")
    _trained_run(theirs)
    body = assert_error(owner_api.post("/api/v1/generations/", {"prompt": "a ohwx cat", "subject": theirs.pk}, format="json"), 400, "subject")
    assert "does not exist" in body["errors"]["subject"][0]


# --- privacy, anonymous, methods ---------------------------------------------------------------------
def _urls(subject: Subject, photo: SubjectPhoto, run: TrainingRun) -> list[tuple[str, str]]:
    s, p, r = subject.pk, photo.pk, run.pk
    return [
        ("get", f"{URL}{s}/"), ("delete", f"{URL}{s}/"), ("get", f"{URL}{s}/photos/"), ("post", f"{URL}{s}/photos/"),
        ("get", f"{URL}{s}/photos/{p}/"), ("patch", f"{URL}{s}/photos/{p}/"), ("delete", f"{URL}{s}/photos/{p}/"), ("get", f"{URL}{s}/photos/{p}/crop/"),
        ("get", f"{URL}{s}/photos/{p}/image/"), ("post", f"{URL}{s}/train/"),
        ("get", f"/api/v1/training-runs/{r}/"), ("post", f"/api/v1/training-runs/{r}/cancel/"), ("get", f"/api/v1/training-runs/{r}/checkpoint/"),
        ("get", f"/api/v1/training-runs/{r}/token-embedding/"),
    ]


def test_other_user_gets_404_everywhere(owner_api, other_api, subject_with_photos):
    run = _trained_run(subject_with_photos)
    for method, url in _urls(subject_with_photos, subject_with_photos.photos.first(), run):
        assert_error(getattr(other_api, method)(url), 404)
    assert Subject.objects.count() == 1 and SubjectPhoto.objects.count() == 3 and TrainingRun.objects.get().status == JobStatus.SUCCEEDED
    assert other_api.get(URL).json()["count"] == 0 and other_api.get("/api/v1/training-runs/").json()["count"] == 0


def test_photo_of_another_subject_is_404(owner, owner_api, subject_with_photos):
    second = Subject.objects.create(owner=owner, name="Two", token="ohwx", class_noun="cat")
    photo = subject_with_photos.photos.first()
    assert_error(owner_api.get(f"{URL}{second.pk}/photos/{photo.pk}/"), 404)


def test_anonymous_gets_401_everywhere(anon_api, subject_with_photos):
    run = _trained_run(subject_with_photos)
    for method, url in _urls(subject_with_photos, subject_with_photos.photos.first(), run) + [("get", URL), ("post", URL), ("get", "/api/v1/training-runs/")]:
        assert_error(getattr(anon_api, method)(url), 401)


@pytest.mark.parametrize(
    "method, path",
    [("put", "{s}/"), ("patch", "{s}/"), ("delete", "-"), ("put", "{s}/photos/"), ("post", "{s}/photos/{p}/"), ("post", "{s}/photos/{p}/crop/"),
     ("get", "{s}/train/"), ("post", "/api/v1/training-runs/"), ("delete", "/api/v1/training-runs/{r}/"), ("get", "/api/v1/training-runs/{r}/cancel/")],
)
def test_wrong_method_is_405(owner_api, subject_with_photos, method, path):
    run = TrainingRun.objects.create(subject=subject_with_photos, status=JobStatus.FAILED)
    photo = subject_with_photos.photos.first()
    url = URL if path == "-" else path.format(s=subject_with_photos.pk, p=photo.pk, r=run.pk)
    url = url if url.startswith("/") else URL + url
    assert_error(getattr(owner_api, method)(url), 405)
