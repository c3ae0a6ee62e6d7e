"""Work that spans rows and the queue."""
from __future__ import annotations

import re
import secrets
from datetime import date, datetime, time, timedelta
from typing import Callable

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from imagesite import quotas
from imagesite.jobs import JobCanceled, JobStatus

from .catalog import default_model
from .models import MAX_SEED, BaseModel, GeneratedImage, Generation, usable_subjects
from .prompt_files import resolve_prompt_files
from .inputs import InputRejected, check_header, size_for_input
from .rules import (MASK_BLUR_RANGE, STRENGTH_RANGE, prompt_problems, validate_hires, validate_size, validate_strength,
                    validate_subject_family, validate_subject_in_prompt)


DEFAULTED_SETTINGS = ("steps", "guidance_scale", "width", "height", "scheduler")


def create_generation(*, owner, prompt: str, seed: int | None = None, subject=None, base_model=None,
                      init_image=None, source_image: GeneratedImage | None = None, strength: float | None = None,
                      mask=None, mask_blur: int | None = None, hires_scale: float | None = None,
                      hires_upscaler: str | None = None, hires_strength: float | None = None,
                      hires_steps: int | None = None, **settings) -> Generation:
    """Create the row and queue its task in one transaction, after the owner's limits admit it (pages
    and the API both come here). `base_model` is an offered BaseModel (None: the subject's own base
    when it is offered, else the operator's default). Omitted settings take that model's defaults; a
    blank seed becomes a random one, and the seed used is recorded. Width and height must be within
    the model's limits; `subject` must be one of the owner's trained subjects, trained on a base of
    the same family, with its token in the prompt (ValidationError keyed by field otherwise).

    img2img and inpainting: `init_image` (an uploaded file) or `source_image` (one of the owner's
    images, whose file is copied so the job stands alone), redrawn at `strength` (0-1); `mask` (an
    upload of the input's size; white or painted = repaint) with its edge blurred `mask_blur` px.
    Width and height not given follow the input, rounded to the model's multiple. Uploads are judged
    here from their headers only; the worker decodes and cleans them. Hires fix: `hires_scale` > 1
    (text-to-image only) upscales by it with `hires_upscaler` and refines at `hires_strength` for
    `hires_steps` (0: steps). A refusal writes no file and queues nothing."""
    studio = {"strength": strength, "mask_blur": mask_blur, "hires_scale": hires_scale, "hires_upscaler": hires_upscaler,
              "hires_strength": hires_strength, "hires_steps": hires_steps}
    for name, value in studio.items():  # omitted: the model field's default (one place for them)
        if value is None or value == "":
            studio[name] = Generation._meta.get_field(name).get_default()
    base_model = _choose_base(base_model, subject)
    info = base_model.info()
    errors: dict[str, list[str]] = {}
    input_size = _check_inputs(owner, init_image, source_image, mask, errors)
    if input_size is not None and (settings.get("width") is None or settings.get("height") is None):
        settings["width"], settings["height"] = size_for_input(input_size, settings.get("width"), settings.get("height"),
                                                               min_size=info.min_size, max_size=info.max_size)
    for name in DEFAULTED_SETTINGS:
        if settings.get(name) is None:
            settings[name] = getattr(info, name)
    _check_studio_settings(studio, settings, info, has_input=input_size is not None, errors=errors)
    for name in ("width", "height"):
        try:
            validate_size(settings[name], info)
        except ValidationError as exc:
            errors[name] = exc.messages
    for name, text in (("prompt", prompt), ("negative_prompt", settings.get("negative_prompt") or "")):
        if problems := prompt_problems(text):
            errors[name] = problems
    if "prompt" not in errors and "negative_prompt" not in errors:
        try:  # <lora:name:w> tags and embedding names, resolved once: the job stores what was checked
            settings["loras"], settings["embeddings"] = resolve_prompt_files(owner, prompt, settings.get("negative_prompt") or "", base_model)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if subject is not None:
        if not usable_subjects(owner).filter(pk=subject.pk).exists():
            errors["subject"] = ["Choose one of your trained subjects."]
        else:
            for name, check in (("subject", lambda: validate_subject_family(subject, base_model)),
                                ("prompt", lambda: validate_subject_in_prompt(prompt, subject.token))):
                try:
                    check()
                except ValidationError as exc:
                    errors[name] = exc.messages
    if errors:
        raise ValidationError(errors)
    written: list = []
    try:
        with transaction.atomic():
            quotas.admit(owner, "max_queued_jobs", "generations_per_hour", "gpu_seconds_per_day")
            generation = Generation(
                owner=owner,
                prompt=prompt,
                seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
                model_name=f"{base_model.name} + {subject.name}" if subject else base_model.name,
                base_model=base_model,
                subject=subject,
                subject_name=subject.name if subject else "",
                source_image=source_image,
                **studio,
                **settings,
            )
            _store_inputs(generation, init_image, source_image, mask, written)
            generation.save()
            generation.enqueue()
    except BaseException:
        for field_file in written:  # nothing was queued: no file of it stays behind
            field_file.storage.delete(field_file.name)
        raise
    return generation


def _check_inputs(owner, init_image, source_image: GeneratedImage | None, mask, errors: dict[str, list[str]]) -> tuple[int, int] | None:
    """Judge the input and the mask from their headers (no pixel decoded: this runs in a request);
    problems go into `errors` by field. Returns the input's (width, height), None without one."""
    size = None
    if init_image is not None and source_image is not None:
        errors["source_image"] = ["Give an input image or a gallery image, not both."]
    elif init_image is not None:
        try:
            size = check_header(init_image, size=init_image.size).size
        except InputRejected as exc:
            errors["init_image"] = [str(exc)]
    elif source_image is not None:
        if not GeneratedImage.objects.for_user(owner).filter(pk=source_image.pk).exists():
            errors["source_image"] = ["Choose one of your own images."]
        else:
            size = (source_image.width, source_image.height)
    if mask is not None:
        if init_image is None and source_image is None:
            errors["mask"] = ["A mask needs an input image to paint on."]
        else:
            try:
                mask_size = check_header(mask, size=mask.size, what="mask").size
                if size is not None and mask_size != size:
                    errors["mask"] = [f"The mask is {mask_size[0]}×{mask_size[1]} pixels; it must be the input's size, {size[0]}×{size[1]}."]
            except InputRejected as exc:
                errors["mask"] = [str(exc)]
    return size


def _check_studio_settings(studio: dict, settings: dict, info, *, has_input: bool, errors: dict[str, list[str]]) -> None:
    if has_input:
        try:
            validate_strength(studio["strength"], settings["steps"])
        except ValidationError as exc:
            errors["strength"] = exc.messages
    elif not STRENGTH_RANGE[0] <= studio["strength"] <= STRENGTH_RANGE[1]:
        errors["strength"] = [f"The strength must be between {STRENGTH_RANGE[0]:g} and {STRENGTH_RANGE[1]:g}."]
    if not MASK_BLUR_RANGE[0] <= studio["mask_blur"] <= MASK_BLUR_RANGE[1]:
        errors["mask_blur"] = [f"Between {MASK_BLUR_RANGE[0]} and {MASK_BLUR_RANGE[1]} pixels."]
    errors.update(validate_hires(studio["hires_scale"], studio["hires_upscaler"], studio["hires_steps"],
                                 settings["width"], settings["height"], info))
    if studio["hires_scale"] > 1 and "hires_scale" not in errors and has_input:
        errors["hires_scale"] = ["Hires fix is for text-to-image; to enlarge an input, set a larger width and height (img2img upscales it)."]
    # A hires strength that leaves no step upscales only (A1111 at denoising 0): a range is the only rule.
    if not STRENGTH_RANGE[0] <= studio["hires_strength"] <= STRENGTH_RANGE[1]:
        errors["hires_strength"] = [f"The hires strength must be between {STRENGTH_RANGE[0]:g} and {STRENGTH_RANGE[1]:g}."]


def _store_inputs(generation: Generation, init_image, source_image: GeneratedImage | None, mask, written: list) -> None:
    """Write the input (the upload, or a copy of the gallery image's file) and the mask under the
    job's generated names; each file written is added to `written` (removed again if the insert fails)."""
    if init_image is not None:
        init_image.seek(0)
        generation.init_image.save("input", _as_file(init_image), save=False)
        written.append(generation.init_image)
    elif source_image is not None:
        with source_image.file.open("rb") as handle:
            generation.init_image.save("input", File(handle), save=False)
        written.append(generation.init_image)
    if mask is not None:
        mask.seek(0)
        generation.mask.save("mask", _as_file(mask), save=False)
        written.append(generation.mask)


def _as_file(upload) -> File:
    return upload if isinstance(upload, File) else File(upload)


def _choose_base(base_model: BaseModel | None, subject) -> BaseModel:
    if base_model is not None:
        if not BaseModel.objects.offered().filter(pk=base_model.pk).exists():
            raise ValidationError({"base_model": [f"“{base_model.name}” is not offered (disabled, or its files cannot be used)."]})
        return base_model
    if subject is not None:  # the base the subject was trained on, when it is still offered
        run = subject.trained_run()
        if run is not None and run.base_model_id and BaseModel.objects.offered().filter(pk=run.base_model_id).exists():
            return run.base_model
    return default_model()


def store_images(generation: Generation, pngs: list[tuple[bytes, bytes]], seeds: list[int], *, finish: Callable[[], bool],
                 size: tuple[int, int] | None = None) -> None:
    """Write (png, thumbnail) files first, then the rows and `finish()` (the job's end state) in one
    transaction. If `finish` says the job moved on (canceled, deleted) or anything fails, the files
    written are removed again: no orphans. `size`: the images' (width, height) when not the job's
    (hires fix)."""
    width, height = size or (generation.width, generation.height)
    written: list = []
    try:
        rows = []
        for index, ((png, thumb), seed) in enumerate(zip(pngs, seeds)):
            row = GeneratedImage(generation=generation, index=index, seed=seed, width=width, height=height)
            row.file.save("image.png", ContentFile(png), save=False)
            written.append(row.file)
            row.thumbnail.save("thumb.png", ContentFile(thumb), save=False)
            written.append(row.thumbnail)
            rows.append(row)
        with transaction.atomic():
            GeneratedImage.objects.bulk_create(rows)
            if not finish():
                raise JobCanceled()
    except BaseException:
        for field_file in written:
            field_file.storage.delete(field_file.name)
        raise


def record_finished_images(*, owner, subject, training_run, prompt: str, seed: int, steps: int, guidance_scale: float,
                           scheduler: str, model_name: str, pngs: list[tuple[bytes, bytes]], size: tuple[int, int],
                           base_model: BaseModel | None = None) -> Generation:
    """A finished generation drawn by someone else's job (a training run's validation images): files
    first, then the row (already succeeded) and its images in one transaction, so no row is ever
    "running" without a worker's heartbeat behind it. A failure removes the files written."""
    width, height = size
    now = timezone.now()
    generation = Generation(
        owner=owner, prompt=prompt, seed=seed, steps=steps, guidance_scale=guidance_scale, width=width, height=height,
        scheduler=scheduler, num_images=len(pngs), model_name=model_name, base_model=base_model, subject=subject,
        subject_name=subject.name if subject else "", training_run=training_run, status=JobStatus.SUCCEEDED,
        started_at=now, finished_at=now, progress_step=steps, progress_total=steps,
    )
    with transaction.atomic():
        generation.save()
        store_images(generation, pngs, [seed + i for i in range(len(pngs))], finish=lambda: True)
    return generation


SEARCH_MAX_TERMS = 10
_SEARCH_TERM = re.compile(r'"([^"]+)"|(\S+)')


def search_terms(text: str) -> list[str]:
    """The words of a search, each matched on its own; a "quoted phrase" stays one term. At most
    SEARCH_MAX_TERMS (one LIKE each), duplicates dropped."""
    terms: list[str] = []
    for phrase, word in _SEARCH_TERM.findall(text):
        term = " ".join((phrase or word).split()).lower()
        if term and term not in terms:
            terms.append(term)
    return terms[:SEARCH_MAX_TERMS]


def filter_by_words(queryset: QuerySet, text: str, *, field: str = "prompt") -> QuerySet:
    """Rows whose `field` contains every term of `text`, in any order, ignoring case: "green heart"
    finds "a white heart on a green background". The gallery and the API both search with it.
    icontains is UPPER(..) LIKE UPPER(..) on PostgreSQL and LIKE on SQLite (which folds ASCII
    letters only); both escape % and _."""
    condition = Q()
    for term in search_terms(text):
        condition &= Q(**{f"{field}__icontains": term})
    return queryset.filter(condition) if condition else queryset



def filter_images(queryset: QuerySet, *, subject: int | None = None, base_model: int | None = None,
                  created_from: date | None = None, created_to: date | None = None,
                  training_samples: bool | None = None) -> QuerySet:
    """The gallery's and the API's image filters: by subject and base model (ids), by the day made
    (both ends included, in the site's time zone) and with (True), without (False) or regardless of
    (None) a training run's validation samples. The dates become a range on `created_at` itself, so
    the owner + newest-first index still serves the query."""
    if subject is not None:
        queryset = queryset.filter(generation__subject_id=subject)
    if base_model is not None:
        queryset = queryset.filter(generation__base_model_id=base_model)
    if created_from is not None:
        queryset = queryset.filter(created_at__gte=_start_of_day(created_from))
    if created_to is not None and created_to < date.max:  # the last day there is bounds nothing
        queryset = queryset.filter(created_at__lt=_start_of_day(created_to + timedelta(days=1)))
    if training_samples is not None:
        queryset = queryset.filter(generation__training_run__isnull=not training_samples)
    return queryset


def _start_of_day(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))
