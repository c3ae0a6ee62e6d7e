"""Subjects: work that spans rows, files and the queue."""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from generation.catalog import default_model
from generation.modelinfo import describe_model
from generation.models import BaseModel
from imagesite import quotas
from imagesite.conflicts import conflict

from . import rules
from .models import PhotoStatus, Subject, SubjectPhoto, TrainingMethod, TrainingRun
from .photos import MAX_PHOTOS, MIN_PHOTOS, PhotoHeader, PhotoRejected, check_header, content_sha256

ALREADY_UPLOADED = "already uploaded to this subject; skipped."


@dataclass
class PhotoUploadOutcome:
    accepted: list[SubjectPhoto]
    rejected: list[tuple[str, str]]  # (file name as sent, reason)


def create_subject(*, owner, name: str, class_noun: str, token: str = "") -> Subject:
    """Make the owner's subject; a blank token gets a suggested one. Every rule is judged here, in
    the transaction of the insert, whoever calls (the page's form and the API's serializer only pass
    on what was sent): the class noun's and the token's own rules (training.rules; a 400), and unique
    names and tokens per owner, under the owner's lock (a 409 conflict), so simultaneous creates get a
    readable refusal, never an IntegrityError. Refusals come together, as a ValidationError keyed by
    field ("name", "class_noun", "token")."""
    name = name.strip()
    with transaction.atomic():
        quotas.lock_user(owner)
        mine = Subject.objects.for_user(owner)
        taken = set(mine.values_list("token", flat=True))
        errors: dict[str, list[ValidationError]] = {}
        if not name:
            errors["name"] = [ValidationError("Give the subject a name.")]
        elif mine.filter(name__iexact=name).exists():
            errors["name"] = [conflict("You already have a subject with this name.")]
        try:
            class_noun = rules.validate_class_noun(class_noun)
        except ValidationError as exc:
            errors["class_noun"] = exc.error_list
        try:
            token = rules.validate_token(token, taken=taken) if token else rules.suggest_token(taken)
        except ValidationError as exc:
            errors["token"] = exc.error_list
        else:
            if token in taken:
                errors["token"] = [conflict(f"You already use “{token}” for another subject.")]
        if errors:
            raise ValidationError(errors)
        return Subject.objects.create(owner=owner, name=name, token=token, class_noun=class_noun)


def _ensure_photos_editable(subject: Subject) -> None:
    if subject.is_training():
        raise conflict("Photos can't change while the subject is training; cancel the run first.")


def add_photos(*, subject: Subject, files) -> PhotoUploadOutcome:
    """Take in an upload (Django UploadedFile objects) without decoding it; a worker does the rest.

    Each file gets only the checks that need no decode (size, type, header dimensions, animation);
    each passing one is streamed to storage under a generated name and becomes a `pending` photo,
    queued for training.tasks.process_photo once the rows commit. Files past the subject's cap come
    back rejected, as do the bad ones, each with its reason. The upload quota is admitted, and the
    cap counted, under the owner's lock in the transaction of the insert. Files first, then rows: a
    failure or a refusal (QuotaExceeded) leaves no file behind."""
    _ensure_photos_editable(subject)
    resolution = describe_model(settings.IMAGESITE_MODEL).native_size
    rejected: list[tuple[str, str]] = []
    passing: list[tuple[UploadedFile, PhotoHeader]] = []
    for file in files:
        try:
            passing.append((file, check_header(file, size=file.size, resolution=resolution)))
        except PhotoRejected as exc:
            rejected.append((file.name, exc.reason))
    photos = [SubjectPhoto(subject=subject, original_name=(file.name or "")[:255], width=header.width, height=header.height,
                           status=PhotoStatus.PENDING, content_sha256=getattr(file, "content_sha256", None) or content_sha256(file))
              for file, header in passing]
    written: list[SubjectPhoto] = []
    try:
        for photo, (file, _) in zip(photos, passing):
            # FieldFile.save streams the upload in chunks under a generated name; never read whole.
            photo.upload.save("upload", file, save=False)
            written.append(photo)
        with transaction.atomic():
            quotas.lock_user(subject.owner)  # before counting, so simultaneous uploads count in turn
            _ensure_photos_editable(subject)
            # The same bytes as a kept photo (an earlier upload, or a simultaneous one that took the
            # lock first) are skipped; two copies in one call are kept once.
            known = set(subject.photos.kept().filter(content_sha256__in={p.content_sha256 for p in photos})
                        .values_list("content_sha256", flat=True))
            fresh, repeated = [], []
            for photo in photos:
                (repeated if photo.content_sha256 in known else fresh).append(photo)
                known.add(photo.content_sha256)
            room = max(0, MAX_PHOTOS - subject.photos.kept().count())
            accepted = fresh[:room]
            if accepted:
                quotas.admit(subject.owner, "uploads_per_hour", adding=len(accepted))
            for photo in accepted:
                photo.save()
                transaction.on_commit(photo.enqueue)
    except BaseException:
        for photo in written:
            photo.upload.storage.delete(photo.upload.name)
        raise
    for photo in repeated:
        photo.upload.storage.delete(photo.upload.name)
        rejected.append((photo.original_name, ALREADY_UPLOADED))
    for photo in fresh[room:]:
        photo.upload.storage.delete(photo.upload.name)
        rejected.append((photo.original_name, f"A subject can have at most {MAX_PHOTOS} photos; this one was not added."))
    return PhotoUploadOutcome(accepted=accepted, rejected=rejected)


def delete_subject(*, subject: Subject) -> None:
    """Cancel its active runs (a running worker stops at its next step and finds the subject gone),
    then delete it with its photos, class images and checkpoints; images made with it stay."""
    with transaction.atomic():
        for run in subject.runs.active():
            run.cancel()
        subject.delete()


def remove_photo(*, photo: SubjectPhoto) -> None:
    """Delete a photo in any state, with its files (training.signals); a worker still processing it
    finds the row gone and deletes what it wrote."""
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
        if not photos[pk].is_ready:
            errors[str(pk)] = ["Only a checked photo can be captioned; this one is still being processed or was rejected."]
            continue
        try:
            photos[pk].caption = rules.validate_caption(text, token=subject.token)
        except ValidationError as exc:
            errors[str(pk)] = exc.messages
    if errors:
        raise ValidationError(errors)
    SubjectPhoto.objects.bulk_update(photos.values(), ["caption"])
    return list(photos.values())


def start_training(*, subject: Subject, method: str = TrainingMethod.LORA, options: dict | None = None, webhook_url: str = "",
                   base_model=None) -> TrainingRun:
    """Queue a DreamBooth run on the training cluster, after checking the options (only those the
    user chose: rules.clean_training_options; the worker decides the rest) and that the subject can train.
    `base_model` is an offered BaseModel (None: the operator's default); the run records it and its
    family, and generations then offer the subject only with bases of that family."""
    base_model = _training_base(base_model)
    # The user's choices, judged here for every caller (the form and the serializer pass on only what
    # was sent): a ValidationError keyed by option. Before the transaction: it reads the base's config
    # files, not stored rows, so it needs no lock.
    options = rules.clean_training_options(method, dict(options or {}), base_source=str(base_model.path))
    with transaction.atomic():
        # The owner's lock also keeps a concurrent second start for the same subject out.
        quotas.admit(subject.owner, "max_queued_jobs", "trainings_per_day", "gpu_seconds_per_day")
        if subject.is_training():
            raise conflict("This subject is already training.")
        pending = subject.photos.pending().count()
        if pending:
            raise conflict(f"{pending} photo{'s are' if pending != 1 else ' is'} still being processed; try again in a moment.")
        count = subject.photos.ready().count()
        if count < MIN_PHOTOS:
            raise conflict(f"Upload at least {MIN_PHOTOS} photos first (there {'is' if count == 1 else 'are'} {count}).")
        run = TrainingRun.objects.create(
            subject=subject, method=method, options=options, webhook_url=webhook_url,
            base_model=base_model, base_model_name=base_model.name, base_family=base_model.family,
        )
        run.enqueue()
    return run


def _training_base(base_model):
    """The base a run trains on: an offered one with files here (a diffusers folder or a single
    file, which the training worker converts once); None is the operator's default."""
    if base_model is None:
        base_model = default_model()
    elif not BaseModel.objects.offered().filter(pk=base_model.pk).exists():
        raise ValidationError({"base_model": [f"“{base_model.name}” is not offered (disabled, or its files cannot be used)."]})
    reason = rules.untrainable_reason(base_model)
    if reason:
        raise ValidationError({"base_model": [reason]})
    return base_model
