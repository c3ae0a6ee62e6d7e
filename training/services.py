"""Subjects: work that spans rows, files and the queue."""
from __future__ import annotations

import io
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image

from generation.modelinfo import describe_model, model_kind
from imagesite import quotas

from . import rules
from .captions import suggest_caption
from .models import Subject, SubjectPhoto, TrainingMethod, TrainingRun
from .photos import MAX_FILE_BYTES, MIN_PHOTOS, prepare_many


@dataclass
class PhotoUploadOutcome:
    accepted: list[SubjectPhoto]
    rejected: list[tuple[str, str]]  # (file name as sent, reason)


def create_subject(*, owner, name: str, class_noun: str, token: str = "") -> Subject:
    """Make the owner's subject; a blank token gets a suggested one. Names and tokens are unique per
    owner: checked under the owner's lock, in the transaction of the insert, so simultaneous creates
    get a readable refusal (ValidationError keyed by field), never an IntegrityError."""
    with transaction.atomic():
        quotas.lock_user(owner)
        mine = Subject.objects.for_user(owner)
        taken = set(mine.values_list("token", flat=True))
        errors: dict[str, list[str]] = {}
        try:
            token = rules.validate_token(token, taken=taken) if token else rules.suggest_token(taken)
        except ValidationError as exc:
            errors["token"] = exc.messages
        if mine.filter(name__iexact=name.strip()).exists():
            errors["name"] = ["You already have a subject with this name."]
        if errors:
            raise ValidationError(errors)
        return Subject.objects.create(owner=owner, name=name.strip(), token=token, class_noun=class_noun)


def _ensure_photos_editable(subject: Subject) -> None:
    if subject.is_training():
        raise ValidationError("Photos can't change while the subject is training; cancel the run first.")


def add_photos(*, subject: Subject, files) -> PhotoUploadOutcome:
    """Check each uploaded file (Django UploadedFile objects) on its own: the good ones are cleaned,
    cropped and stored (files first, then the row; a failure removes that photo's files), each bad
    one comes back with its reason."""
    _ensure_photos_editable(subject)
    info = describe_model(settings.IMAGESITE_MODEL)
    # A file over the limit is refused from its declared size, without reading it into memory.
    too_big = [(f.name, f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.") for f in files if f.size > MAX_FILE_BYTES]
    readable = [(f.name, f.read()) for f in files if f.size <= MAX_FILE_BYTES]
    result = prepare_many(readable, resolution=info.native_size, already_stored=subject.photos.count())
    accepted: list[SubjectPhoto] = []
    for name, prepared in result.accepted:
        caption = suggest_caption(Image.open(io.BytesIO(prepared.crop_bytes)), token=subject.token,
                                  class_noun=subject.class_noun, backgrounds=info.caption_backgrounds)
        photo = SubjectPhoto(
            subject=subject, face_found=prepared.face_found, width=prepared.width, height=prepared.height,
            original_name=(name or "")[:255], caption=caption,
        )
        written = []
        try:
            photo.image.save("photo.jpg", ContentFile(prepared.image_bytes), save=False)
            written.append(photo.image)
            photo.crop.save("crop.png", ContentFile(prepared.crop_bytes), save=False)
            written.append(photo.crop)
            photo.save()
        except BaseException:
            for field_file in written:
                field_file.storage.delete(field_file.name)
            raise
        accepted.append(photo)
    return PhotoUploadOutcome(accepted=accepted, rejected=too_big + result.rejected)


def delete_subject(*, subject: Subject) -> None:
    """Cancel its active runs (a running worker stops at its next step and finds the subject gone),
    then delete it with its photos, class images and checkpoints; images made with it stay."""
    with transaction.atomic():
        for run in subject.runs.active():
            run.cancel()
        subject.delete()


def remove_photo(*, photo: SubjectPhoto) -> None:
    _ensure_photos_editable(photo.subject)
    photo.delete()


def set_captions(*, subject: Subject, captions: dict[int, str]) -> list[SubjectPhoto]:
    """Save the captions of the subject's photos ({photo id: caption}; blank clears one) all or
    nothing: a ValidationError keyed by photo id names every caption that is refused."""
    _ensure_photos_editable(subject)
    photos = {photo.pk: photo for photo in subject.photos.filter(pk__in=captions)}
    errors: dict[str, list[str]] = {}
    for pk, text in captions.items():
        if pk not in photos:
            errors[str(pk)] = ["No such photo of this subject."]
            continue
        try:
            photos[pk].caption = rules.validate_caption(text, token=subject.token)
        except ValidationError as exc:
            errors[str(pk)] = exc.messages
    if errors:
        raise ValidationError(errors)
    SubjectPhoto.objects.bulk_update(photos.values(), ["caption"])
    return list(photos.values())


def start_training(*, subject: Subject, method: str = TrainingMethod.LORA, options: dict | None = None, webhook_url: str = "") -> TrainingRun:
    """Queue a DreamBooth run on the training cluster, after checking the subject can train."""
    if model_kind(settings.IMAGESITE_MODEL) != "folder":
        raise ValidationError("Training needs the base model as a diffusers folder (IMAGESITE_MODEL).")
    with transaction.atomic():
        # The owner's lock also keeps a concurrent second start for the same subject out.
        quotas.admit(subject.owner, "max_queued_jobs", "trainings_per_day")
        if subject.is_training():
            raise ValidationError("This subject is already training.")
        count = subject.photos.count()
        if count < MIN_PHOTOS:
            raise ValidationError(f"Upload at least {MIN_PHOTOS} photos first (there {'is' if count == 1 else 'are'} {count}).")
        run = TrainingRun.objects.create(subject=subject, method=method, options=dict(options or {}), webhook_url=webhook_url)
        run.enqueue()
    return run
