"""django-q2 tasks: thin. Load the row, claim it, call the pipeline, store files then rows."""
from __future__ import annotations

import logging
import time

from django.conf import settings

from imagesite.jobs import JobCanceled, JobStatus, heartbeat

from .models import Generation
from .services import store_images

log = logging.getLogger("generation.tasks")


class ProgressReporter:
    """Progress callback for the pipeline: writes at most every `interval_s` (and on the last step),
    and between writes reads the row for a cancel at most every `cancel_check_s`, so a cancel stops
    the job within a step or so without a query per step on fast models."""

    def __init__(self, job, interval_s: float = 0.25, cancel_check_s: float = 0.1):
        self.job = job
        self.interval_s, self.cancel_check_s = interval_s, cancel_check_s
        self.last_write = self.last_check = 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if step >= total or now - self.last_write >= self.interval_s:
            self.last_write = self.last_check = now
            self.job.report_progress(step, total)  # raises JobCanceled if the row says so
        elif now - self.last_check >= self.cancel_check_s:
            self.last_check = now
            if self.job.is_canceled():
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
    from .pipeline import GenerationError, encode_for_gallery, get_renderer

    try:
        with heartbeat(job):
            renderer = get_renderer(
                settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS
            )
            render_settings = job.render_settings()
            adapter = _subject_adapter(job)
            images = renderer.render(render_settings, on_step=ProgressReporter(job), adapter=adapter)
            pngs = encode_for_gallery(images, render_settings, renderer.info.name)
            store_images(job, pngs, render_settings.seeds, finish=job.succeed)
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


def _subject_adapter(job: Generation):
    """The subject's trained weights for this job, or None; a subject deleted after the job was
    queued is a readable failure, not a silent fallback to the base model."""
    from .pipeline import Adapter, GenerationError

    if not job.subject_name:
        return None
    run = job.subject.trained_run() if job.subject_id else None
    if run is None or not run.checkpoint:
        raise GenerationError(f"The subject “{job.subject_name}” was deleted or has no trained checkpoint any more.")
    from django.core.files.storage import default_storage

    token_file = run.token_embedding_name()
    return Adapter(
        kind=run.method, path=default_storage.path(run.checkpoint), key=f"run-{run.pk}",
        token_embedding=default_storage.path(token_file) if token_file else None,
    )
