"""Photo intake: every bad kind of upload is refused with a reason, good photos come out clean.

The checks and the cleaning are plain pytest (no database); the request's side (training.services
add_photos: header checks only, raw files stored, rows pending) and the worker's (training.tasks
process_photo, requeue_stale_photos) run on the test database, with one end-to-end test on a real
qcluster. Every image is made in memory with Pillow.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFilter

from training import photos
from training.photos import (
    MAX_PHOTOS,
    PhotoRejected,
    check_and_prepare,
    check_header,
    face_detection_available,
)

RES = 64


def _jpeg(img: Image.Image, **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **save_args)
    return buf.getvalue()


def _png(img: Image.Image, **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **save_args)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (120, 90), colour: str = "orange") -> Image.Image:
    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).ellipse([10, 10, size[0] - 10, size[1] - 10], fill="navy")
    return img


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width×height but carries only a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _reason(data: bytes) -> str:
    with pytest.raises(PhotoRejected) as info:
        check_and_prepare(data, resolution=RES)
    return info.value.reason


# --- refused before decoding -------------------------------------------------------------------


def test_zero_bytes_is_rejected_as_empty() -> None:
    assert "empty" in _reason(b"")


def test_text_renamed_jpg_is_rejected_by_content() -> None:
    assert "not a JPEG, PNG or WebP" in _reason(b"just some text, not a photo\n" * 20)


def test_svg_is_rejected() -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    assert "not a JPEG, PNG or WebP" in _reason(svg)


def test_heic_is_rejected_with_a_hint_to_export_jpeg() -> None:
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
    assert "export it as JPEG" in _reason(heic_header)


def test_gif_is_rejected() -> None:
    buf = io.BytesIO()
    _photo().save(buf, "GIF")
    assert "not a JPEG, PNG or WebP" in _reason(buf.getvalue())


def test_file_over_15_mb_is_rejected_before_anything_else() -> None:
    big = b"\xff\xd8\xff\xe0" + b"\x00" * (15 * 1024 * 1024)
    assert "at most 15 MB" in _reason(big)


def test_png_declaring_huge_dimensions_is_rejected_from_the_header() -> None:
    # 8000×6000 = 48 MP declared, a few bytes of pixel data: a decode would fail as "damaged",
    # so the megapixel reason proves only the header was read.
    data = _png_declaring(8000, 6000)
    start = time.perf_counter()
    reason = _reason(data)
    assert "8000×6000" in reason and "40 megapixels" in reason
    assert time.perf_counter() - start < 0.5


def test_png_declaring_bomb_dimensions_is_rejected() -> None:
    # Past Pillow's own bomb limit (~179 MP) open() itself refuses; we turn that into a reason too.
    assert "megapixels" in _reason(_png_declaring(100_000, 100_000))


def test_animated_png_is_rejected() -> None:
    frames = [_photo(colour=c) for c in ("red", "blue")]
    data = _png(frames[0], save_all=True, append_images=frames[1:])
    assert "animated" in _reason(data)


def test_animated_webp_is_rejected() -> None:
    frames = [_photo(colour=c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    assert "animated" in _reason(buf.getvalue())


def test_photo_smaller_than_half_the_resolution_is_rejected() -> None:
    assert "at least 32 pixels" in _reason(_png(_photo(size=(20, 20))))


# --- refused while decoding --------------------------------------------------------------------


def test_truncated_jpeg_is_rejected() -> None:
    data = _jpeg(_photo(size=(300, 200)))
    assert "incomplete or damaged" in _reason(data[: len(data) // 2])


def test_truncated_png_is_rejected() -> None:
    data = _png(Image.effect_noise((200, 200), 60).convert("RGB"))
    assert "incomplete or damaged" in _reason(data[: len(data) // 2])


# --- cleaned and cropped -----------------------------------------------------------------------


def test_good_jpeg_png_and_webp_are_accepted() -> None:
    buf = io.BytesIO()
    _photo().save(buf, "WEBP")
    for data in (_jpeg(_photo()), _png(_photo()), buf.getvalue()):
        prepared = check_and_prepare(data, resolution=RES)
        assert Image.open(io.BytesIO(prepared.crop_bytes)).size == (RES, RES)
        assert Image.open(io.BytesIO(prepared.image_bytes)).format == "JPEG"


def test_exif_gps_and_camera_data_are_dropped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    data = _jpeg(_photo(), exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the fixture really has GPS

    prepared = check_and_prepare(data, resolution=RES)
    for out in (prepared.image_bytes, prepared.crop_bytes):
        cleaned = Image.open(io.BytesIO(out))
        assert not cleaned.getexif()
        assert "exif" not in cleaned.info
        assert b"SpyCam" not in out and b"Exif" not in out


def test_colour_profile_is_applied_and_not_kept() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _jpeg(_photo(), icc_profile=srgb)
    prepared = check_and_prepare(data, resolution=RES)
    for out in (prepared.image_bytes, prepared.crop_bytes):
        assert "icc_profile" not in Image.open(io.BytesIO(out)).info


def test_exif_orientation_is_applied() -> None:
    # Stored 120×60: left half red, right half blue. Orientation 6 means "rotate 90° clockwise
    # to display", so the upright photo is 60×120 with red on top.
    img = Image.new("RGB", (120, 60), "blue")
    img.paste("red", (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    prepared = check_and_prepare(_jpeg(img, exif=exif.tobytes()), resolution=RES)

    upright = Image.open(io.BytesIO(prepared.image_bytes)).convert("RGB")
    assert (prepared.width, prepared.height) == upright.size == (60, 120)
    top, bottom = upright.getpixel((30, 10)), upright.getpixel((30, 110))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_transparent_png_gets_a_white_background() -> None:
    img = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    prepared = check_and_prepare(_png(img), resolution=RES)
    assert Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB").getpixel((5, 5)) == (255, 255, 255)


def _three_bands() -> Image.Image:
    """300×100: red, green and blue 100-px squares side by side."""
    img = Image.new("RGB", (300, 100), "red")
    img.paste("lime", (100, 0, 200, 100))
    img.paste("blue", (200, 0, 300, 100))
    return img


def test_no_face_gives_a_centre_crop() -> None:
    prepared = check_and_prepare(_png(_three_bands()), resolution=RES)
    assert not prepared.face_found and prepared.face_box is None
    crop = Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB")
    assert crop.size == (RES, RES)
    assert crop.getpixel((RES // 2, RES // 2)) == (0, 255, 0)


def test_crop_is_centred_on_the_largest_face(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the detector is patched (opencv 5 ships no Haar cascade, see the next test): the crop
    # logic must move the square onto the largest face and keep it inside the photo.
    monkeypatch.setattr(photos, "detect_faces", lambda img: [(230, 30, 40, 40), (10, 10, 20, 20)])
    prepared = check_and_prepare(_png(_three_bands()), resolution=RES)
    assert prepared.face_found and prepared.face_box == (230, 30, 40, 40)
    crop = Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB")
    assert crop.getpixel((RES // 2, RES // 2)) == (0, 0, 255)  # the blue square, clamped to the edge


def _drawn_face() -> Image.Image:
    """A 800×400 picture with a simple drawn face on its right half (the cascade finds it)."""
    size = 400
    img = Image.new("RGB", (size * 2, size), (90, 120, 160))
    draw = ImageDraw.Draw(img)
    cx, cy, r = size * 1.5, size / 2, size * 0.3
    draw.ellipse([cx - r, cy - r * 1.3, cx + r, cy + r * 1.3], fill=(224, 180, 150))
    for dx in (-0.4, 0.4):
        ex = cx + dx * r
        draw.ellipse([ex - r * 0.15, cy - r * 0.43, ex + r * 0.15, cy - r * 0.27], fill=(40, 30, 30))
        draw.rectangle([ex - r * 0.22, cy - r * 0.6, ex + r * 0.22, cy - r * 0.55], fill=(60, 40, 30))
    draw.polygon([(cx, cy - r * 0.2), (cx - r * 0.12, cy + r * 0.25), (cx + r * 0.12, cy + r * 0.25)], fill=(190, 140, 120))
    draw.ellipse([cx - r * 0.35, cy + r * 0.5, cx + r * 0.35, cy + r * 0.65], fill=(150, 60, 60))
    return img.filter(ImageFilter.GaussianBlur(2))


@pytest.mark.skipif(
    not face_detection_available(),
    reason="this opencv has no Haar cascades (opencv-python-headless 5.0 dropped them; 4.x ships them)",
)
def test_real_cascade_finds_a_drawn_face_and_centres_the_crop() -> None:
    prepared = check_and_prepare(_jpeg(_drawn_face()), resolution=RES)
    assert prepared.face_found
    left, _, width, _ = prepared.face_box  # type: ignore[misc]
    assert 500 < left + width / 2 < 700  # the face is on the right half, around x = 600


# --- the request's checks: header only ---------------------------------------------------------


def _header(data: bytes):
    return check_header(io.BytesIO(data), size=len(data), resolution=RES)


def test_header_check_reads_no_pixels() -> None:
    # A valid header over a few bytes of pixel data: the header check passes, the decode refuses.
    data = _png_declaring(300, 200)
    header = _header(data)
    assert (header.format, header.width, header.height) == ("PNG", 300, 200)
    assert "incomplete or damaged" in _reason(data)


def test_header_check_refuses_what_the_full_check_refuses_without_decoding() -> None:
    for data, reason in [
        (b"", "empty"),
        (b"<svg/>" * 10, "not a JPEG, PNG or WebP"),
        (_png_declaring(8000, 6000), "40 megapixels"),
        (_png_declaring(100_000, 100_000), "megapixels"),
        (_png(_photo(size=(20, 20))), "at least 32 pixels"),
        (_png(_photo(), save_all=True, append_images=[_photo(colour="red")]), "animated"),
    ]:
        with pytest.raises(PhotoRejected, match=reason):
            _header(data)


def test_header_check_trusts_the_declared_size_over_15_mb_without_reading() -> None:
    class Unreadable(io.BytesIO):
        def read(self, *args):
            raise AssertionError("a file over the limit must not be read")

    with pytest.raises(PhotoRejected, match="at most 15 MB"):
        check_header(Unreadable(b""), size=16 * 1024 * 1024, resolution=RES)


def test_header_check_rewinds_the_file() -> None:
    data = _jpeg(_photo())
    file = io.BytesIO(data)
    check_header(file, size=len(data), resolution=RES)
    assert file.tell() == 0 and file.read() == data


# --- the request stores, the worker processes -------------------------------------------------------
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402

db = pytest.mark.django_db


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


def stored_files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def referenced_files() -> set[str]:
    """Every file a photo row points at: nothing else may be left in the media folder."""
    from training.models import SubjectPhoto

    rows = SubjectPhoto.objects.values_list("upload", "image", "crop")
    return {name for row in rows for name in row if name}


@pytest.fixture
def media(settings, tmp_path):
    """A media folder of this test's own, so leftovers of other tests can't hide an orphan."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


@pytest.fixture
def subject(owner):
    from training.models import Subject

    return Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")


def _add(subject, files):
    from training import services

    return services.add_photos(subject=subject, files=files)


@db
def test_upload_is_stored_raw_and_pending_and_one_task_is_queued_per_photo(subject, media, django_capture_on_commit_callbacks):
    from django_q.models import OrmQ

    from training.models import PhotoStatus

    files = [upload("a.png", _png(_photo())), upload("notes.png", b"not an image at all"), upload("b.jpg", _jpeg(_photo()))]
    with django_capture_on_commit_callbacks(execute=True):
        outcome = _add(subject, files)
    assert [p.original_name for p in outcome.accepted] == ["a.png", "b.jpg"]
    assert [name for name, _ in outcome.rejected] == ["notes.png"]
    for photo in outcome.accepted:
        photo.refresh_from_db()
        assert photo.status == PhotoStatus.PENDING and not photo.image and not photo.crop
        assert (photo.width, photo.height) == (120, 90)  # from the header
        assert photo.upload.name.startswith(f"photos/{subject.owner_id}/") and "a.png" not in photo.upload.name
    assert stored_files(media) == referenced_files() == {p.upload.name for p in outcome.accepted}
    assert OrmQ.objects.count() == 2


@db
def test_processing_makes_a_photo_ready_and_removes_the_raw_upload(subject, media):
    from training.models import PhotoStatus
    from training.tasks import process_photo

    [photo] = _add(subject, [upload("green.png", _png(Image.new("RGB", (96, 80), (30, 170, 50))))]).accepted
    raw = photo.upload.name
    assert process_photo(photo.pk) == "ready"
    photo.refresh_from_db()
    assert photo.status == PhotoStatus.READY and not photo.upload and not photo.reason
    assert photo.caption == "a sks shape on a green background"  # the demo model names its backgrounds
    with photo.crop.open("rb") as f:
        assert Image.open(f).size == (RES, RES)
    with photo.image.open("rb") as f:
        assert Image.open(f).format == "JPEG"
    assert raw not in stored_files(media) and stored_files(media) == referenced_files() == {photo.image.name, photo.crop.name}
    assert process_photo(photo.pk) == "nothing to do"  # a redelivered task changes nothing


@db
def test_a_file_the_decode_refuses_is_rejected_with_its_reason_and_nothing_kept(subject, media):
    from training.models import PhotoStatus
    from training.tasks import process_photo

    data = _png(Image.effect_noise((200, 200), 60).convert("RGB"))
    [photo] = _add(subject, [upload("cut.png", data[: len(data) // 2])]).accepted  # the header is intact
    assert process_photo(photo.pk) == "rejected"
    photo.refresh_from_db()
    assert photo.status == PhotoStatus.REJECTED and "incomplete or damaged" in photo.reason
    assert stored_files(media) == referenced_files() == set()


@db
def test_an_unexpected_error_rejects_readably_without_a_path(subject, media, monkeypatch):
    from training import tasks
    from training.models import PhotoStatus

    [photo] = _add(subject, [upload("a.png", _png(_photo()))]).accepted

    def broken(*args, **kwargs):
        raise OSError(f"[Errno 28] No space left on device: '{media}/photos/x.jpg'")

    monkeypatch.setattr(tasks, "suggest_caption", broken)
    assert tasks.process_photo(photo.pk) == "failed"
    photo.refresh_from_db()
    assert photo.status == PhotoStatus.REJECTED and photo.reason == tasks.PHOTO_ERROR
    assert str(media) not in photo.reason and "Errno" not in photo.reason
    assert stored_files(media) == set()


@db
def test_a_photo_deleted_while_processing_leaves_no_files(subject, media, monkeypatch, django_capture_on_commit_callbacks):
    from training import tasks
    from training.models import SubjectPhoto

    [photo] = _add(subject, [upload("a.png", _png(_photo()))]).accepted
    real = tasks.suggest_caption

    def delete_meanwhile(*args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            SubjectPhoto.objects.get(pk=photo.pk).delete()  # the owner removed it, or its subject
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "suggest_caption", delete_meanwhile)
    assert tasks.process_photo(photo.pk) == "nothing to do"
    assert not SubjectPhoto.objects.exists() and stored_files(media) == set()
    assert tasks.process_photo(photo.pk) == "nothing to do"  # and a task for a row that is gone


@db
def test_a_photo_that_keeps_killing_the_worker_is_rejected(subject, media):
    from training.models import MAX_PHOTO_ATTEMPTS, PhotoStatus, SubjectPhoto
    from training.tasks import process_photo

    [photo] = _add(subject, [upload("a.png", _png(_photo()))]).accepted
    SubjectPhoto.objects.filter(pk=photo.pk).update(attempts=MAX_PHOTO_ATTEMPTS)  # three workers died on it
    assert process_photo(photo.pk) == "rejected"
    photo.refresh_from_db()
    assert photo.status == PhotoStatus.REJECTED and "smaller photo" in photo.reason
    assert stored_files(media) == set()


@db
def test_stale_pending_photos_are_requeued_and_very_old_ones_rejected(subject, media):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    from training.models import PhotoStatus, SubjectPhoto
    from training.tasks import requeue_stale_photos

    fresh, lost, ancient = _add(subject, [upload(f"{i}.png", _png(_photo(colour=(200, 100, 40 * i)))) for i in range(3)]).accepted
    now = timezone.now()
    SubjectPhoto.objects.filter(pk=lost.pk).update(queued_at=now - timedelta(minutes=10))
    SubjectPhoto.objects.filter(pk=ancient.pk).update(queued_at=now - timedelta(hours=2), created_at=now - timedelta(hours=2))
    assert requeue_stale_photos(older_than_s=300, give_up_after_s=3600) == {"requeued": 1, "rejected": 1}
    assert OrmQ.objects.count() == 1  # not inside a transaction here: queued at once
    assert SubjectPhoto.objects.get(pk=lost.pk).queued_at > now - timedelta(seconds=5)
    ancient.refresh_from_db()
    assert ancient.status == PhotoStatus.REJECTED and "did not finish" in ancient.reason and not ancient.upload
    assert SubjectPhoto.objects.get(pk=fresh.pk).status == PhotoStatus.PENDING
    assert stored_files(media) == referenced_files() == {fresh.upload.name, lost.upload.name}
    # just requeued: not again within the next minutes
    assert requeue_stale_photos(older_than_s=300) == {"requeued": 0, "rejected": 0}


@db
def test_the_requeue_schedule_exists_once_after_migrate():
    from django_q.models import Schedule

    from training.apps import PHOTO_REQUEUE, ensure_photo_requeue_schedule

    ensure_photo_requeue_schedule()  # again, as the next migrate does
    [schedule] = Schedule.objects.filter(func=PHOTO_REQUEUE)
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)


@db
def test_files_past_the_cap_are_refused_and_not_kept(subject, media):
    from training.models import PhotoStatus, SubjectPhoto

    SubjectPhoto.objects.bulk_create(
        [SubjectPhoto(subject=subject, width=1, height=1, status=PhotoStatus.READY) for _ in range(MAX_PHOTOS - 3)]
        + [SubjectPhoto(subject=subject, width=1, height=1, status=PhotoStatus.REJECTED) for _ in range(5)]  # don't count
    )
    outcome = _add(subject, [upload(f"{i}.png", _png(_photo(colour=(200, 100, 40 * i)))) for i in range(5)])
    assert [p.original_name for p in outcome.accepted] == ["0.png", "1.png", "2.png"]
    assert [name for name, _ in outcome.rejected] == ["3.png", "4.png"]
    assert all(f"at most {MAX_PHOTOS} photos" in reason for _, reason in outcome.rejected)
    assert stored_files(media) == referenced_files() == {p.upload.name for p in outcome.accepted}


@db
def test_over_the_upload_quota_nothing_is_stored(subject, media, owner):
    from imagesite.models import UserLimits
    from imagesite.quotas import QuotaExceeded

    UserLimits.objects.create(user=owner, uploads_per_hour=2)
    with pytest.raises(QuotaExceeded):
        _add(subject, [upload(f"{i}.png", _png(_photo(colour=(200, 100, 40 * i)))) for i in range(3)])
    assert not subject.photos.exists() and stored_files(media) == set()


@db
def test_a_failing_insert_leaves_no_files(subject, media, monkeypatch):
    from training.models import SubjectPhoto

    calls = []

    def save_then_fail(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_save(self, *args, **kwargs)

    real_save = SubjectPhoto.save
    monkeypatch.setattr(SubjectPhoto, "save", save_then_fail)
    with pytest.raises(RuntimeError):
        _add(subject, [upload(f"{i}.png", _png(_photo(colour=(200, 100, 40 * i)))) for i in range(3)])
    assert not SubjectPhoto.objects.exists() and stored_files(media) == set()


@db
def test_training_waits_for_pending_photos_and_counts_only_ready_ones(subject, media):
    from django.core.exceptions import ValidationError

    from training import services
    from training.models import PhotoStatus, SubjectPhoto
    from training.tasks import process_photo

    photos = _add(subject, [upload(f"{i}.png", _png(_photo(colour=(200, 100, 40 * i)))) for i in range(3)]).accepted
    with pytest.raises(ValidationError, match="3 photos are still being processed; try again in a moment"):
        services.start_training(subject=subject)
    for photo in photos[:2]:
        process_photo(photo.pk)
    SubjectPhoto.objects.filter(pk=photos[2].pk).update(status=PhotoStatus.REJECTED)
    with pytest.raises(ValidationError, match="at least 3 photos first .there are 2"):
        services.start_training(subject=subject)


@db
def test_removing_a_pending_photo_deletes_its_raw_upload(subject, media, django_capture_on_commit_callbacks):
    from training import services

    [photo] = _add(subject, [upload("a.png", _png(_photo()))]).accepted
    with django_capture_on_commit_callbacks(execute=True):
        services.remove_photo(photo=photo)
    assert stored_files(media) == set()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_upload_is_processed_end_to_end_by_a_real_worker(subject, worker, media_dir):
    from training.models import PhotoStatus

    from .conftest import wait_for

    before = stored_files(media_dir)
    outcome = _add(subject, [upload("green.png", _png(Image.new("RGB", (96, 80), (30, 170, 50)))), upload("cut.png", _png_declaring(300, 200))])
    assert len(outcome.accepted) == 2  # both pass the header checks; only the worker's decode tells them apart

    def settled():
        return all(p.status != PhotoStatus.PENDING for p in subject.photos.all())

    wait_for(settled, 60, message="the worker to process both photos")
    good, cut = subject.photos.order_by("pk")
    assert good.status == PhotoStatus.READY and good.caption == "a sks shape on a green background"
    assert cut.status == PhotoStatus.REJECTED and "incomplete or damaged" in cut.reason
    assert stored_files(media_dir) - before == {good.image.name, good.crop.name}
