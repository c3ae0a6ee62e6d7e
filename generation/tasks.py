"""django-q2 tasks: thin. Load the row and hand it to the job runner with the work to do."""
from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage

from imagesite.jobs import ProgressReporter, run_job

from .errors import GenerationError
from .models import Generation
from .services import store_images


def run_generation(generation_id: int) -> str:
    job = Generation.objects.filter(pk=generation_id).first()
    return run_job(job, _render, label="Generation", readable=(GenerationError,))


def _render(job: Generation) -> None:
    from .pipeline import encode_for_gallery, get_renderer

    renderer = get_renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS)
    render_settings = job.render_settings()
    images = renderer.render(render_settings, on_step=ProgressReporter(job), adapter=_subject_adapter(job))
    pngs = encode_for_gallery(images, render_settings, renderer.info.name)
    store_images(job, pngs, render_settings.seeds, finish=job.succeed)


def _subject_adapter(job: Generation):
    """The subject's trained weights for this job, or None; a subject deleted after the job was
    queued is a readable failure, not a silent fallback to the base model."""
    from .pipeline import Adapter

    if not job.subject_name:
        return None
    run = job.subject.trained_run() if job.subject_id else None
    if run is None or not run.checkpoint:
        raise GenerationError(f"The subject “{job.subject_name}” was deleted or has no trained checkpoint any more.")
    token_file = run.token_embedding_name()
    return Adapter(
        kind=run.method, path=default_storage.path(run.checkpoint), key=f"run-{run.pk}",
        token_embedding=default_storage.path(token_file) if token_file else None,
    )
