"""django-q2 tasks: thin. Load the row, claim it, call the pipeline, store files then rows."""
from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction

from imagesite.jobs import JobCanceled, JobStatus, heartbeat

from .models import GeneratedImage, Generation

log = logging.getLogger("generation.tasks")


class ProgressReporter:
    """Progress callback for the pipeline: writes at most every `interval_s` (and on the last step),
    and checks the row for a cancel at every step (a cheap read)."""

    def __init__(self, job, interval_s: float = 0.25):
        self.job = job
        self.interval_s = interval_s
        self.last_write = 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if step >= total or now - self.last_write >= self.interval_s:
            self.last_write = now
            self.job.report_progress(step, total)  # raises JobCanceled if the row says so
        elif self.job.is_canceled():
            raise JobCanceled()


def run_generation(generation_id: int) -> str:
    job = Generation.objects.filter(pk=generation_id).first()
    if job is None:
        return "deleted before it ran"
    if not job.claim():
        job.refresh_from_db()
        if job.status == JobStatus.QUEUED:  # attempts used up by earlier, killed workers
            job.fail(f"Gave up after {job.attempts} attempts: the worker kept stopping during this job.")
        return f"not run: {job.status}"
    from .pipeline import GenerationError, encode_png, encode_thumbnail, a1111_parameters, get_renderer

    try:
        with heartbeat(job):
            renderer = get_renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG)
            render_settings = job.render_settings()
            images = renderer.render(render_settings, on_step=ProgressReporter(job))
            pngs = [
                (encode_png(image, a1111_parameters(render_settings, seed, renderer.info.name)), encode_thumbnail(image))
                for image, seed in zip(images, render_settings.seeds)
            ]
            _store_images(job, pngs, render_settings.seeds)
    except JobCanceled:
        return "canceled"
    except GenerationError as exc:
        job.fail(str(exc))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - any failure must end the job, readably
        log.exception("generation %s failed", job.pk)
        job.fail(f"Generation failed: {type(exc).__name__}: {str(exc)[:300]}")
        return "failed"
    return "succeeded"


def _store_images(job: Generation, pngs: list[tuple[bytes, bytes]], seeds: list[int]) -> None:
    """Files first, then rows and the status in one transaction; if the job was canceled or deleted
    meanwhile, or anything fails, the files written are removed (no orphans)."""
    written: list = []
    try:
        rows = []
        for index, ((png, thumb), seed) in enumerate(zip(pngs, seeds)):
            row = GeneratedImage(generation=job, index=index, seed=seed, width=job.width, height=job.height)
            row.file.save("image.png", ContentFile(png), save=False)
            written.append(row.file)
            row.thumbnail.save("thumb.png", ContentFile(thumb), save=False)
            written.append(row.thumbnail)
            rows.append(row)
        with transaction.atomic():
            GeneratedImage.objects.bulk_create(rows)
            if not job.succeed():
                raise JobCanceled()
    except BaseException:
        for field_file in written:
            field_file.storage.delete(field_file.name)
        raise
