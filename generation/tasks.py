"""django-q2 tasks: thin. Load the row and hand it to the job runner with the work to do."""
from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage

from imagesite.jobs import ProgressReporter
from imagesite.runner import run_job

from .errors import GenerationError
from .input_files import load_job_inputs, studio_settings
from .models import Generation, GenerationPreview
from .prompt_files import lora_hashes, worker_adapters
from .services import store_images


def run_generation(generation_id: int) -> str:
    job = Generation.objects.select_related("base_model").filter(pk=generation_id).first()
    return run_job(job, _render, label="Generation", readable=(GenerationError,))


def _render(job: Generation) -> None:
    from . import pipeline

    source = _base_source(job)
    adapters = worker_adapters(job, _subject_adapter(job))  # the subject, the prompt's LoRAs and embeddings
    if not pipeline.is_warm(source):
        # A (re)load takes seconds to minutes: the job page says "Loading model…" meanwhile.
        job.report_progress(0, job.steps, pace_starts=False, phase=LOADING)
    inputs = load_job_inputs(job)  # decoded and cleaned before any model load: a bad file fails fast
    renderer = pipeline.get_renderer(source, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS)
    render_settings = studio_settings(job, job.render_settings())
    report = ProgressReporter(job)
    try:
        images = renderer.render(render_settings, on_step=lambda step, total: report(step, total, phase=RENDERING),
                                 adapter=adapters, preview=_preview_tap(job, renderer), inputs=inputs)
    finally:
        GenerationPreview.discard(job.pk)  # previews are temporary: gone however the render ends
    pngs = pipeline.encode_for_gallery(images, render_settings, renderer.info.name, subject_name=job.subject_name,
                                       lora_hashes=lora_hashes(adapters))
    store_images(job, pngs, render_settings.seeds, finish=job.succeed, size=images[0].size)


LOADING, RENDERING = "loading", "rendering"


def _preview_tap(job: Generation, renderer):
    """Live previews for this job (generation.previews), stored where its pages and API read them;
    None when IMAGESITE_PREVIEW_S is 0 (previews off)."""
    from .previews import PreviewTap, preview_decoder

    interval_s = float(settings.IMAGESITE_PREVIEW_S)
    if interval_s <= 0:
        return None
    decoder = preview_decoder(renderer.source, renderer.family.key, settings.IMAGESITE_TAESD, renderer.device)
    return PreviewTap(decoder, lambda image, step: GenerationPreview.store(job.pk, image, step), interval_s)


def _base_source(job: Generation) -> str:
    """What to load for this job: its base model's files (the default row: this worker's own
    IMAGESITE_MODEL). A job without one (from before base models were recorded) renders with
    IMAGESITE_MODEL, as it would have then."""
    return job.base_model.worker_source() if job.base_model_id else settings.IMAGESITE_MODEL


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
