"""django-q2 tasks: thin. Load the row and hand it to the job runner with the work to do."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from django.conf import settings
from django.core.files.storage import default_storage

from imagesite.jobs import JobCanceled, ProgressReporter
from imagesite.queue import claim_batch
from imagesite.runner import off_the_gpu_clock, run_claimed, run_claimed_batch

from .errors import GenerationError
from .input_files import load_job_inputs
from .models import Generation, GenerationPreview
from .prompt_files import lora_hashes, worker_adapters
from .services import store_images

log = logging.getLogger("generation.tasks")


def run_generation(generation_id: int) -> str:
    """generation_id only wakes this worker: it claims the next job in fair order (imagesite.queue),
    with the queued jobs it can render in the same pipeline call (generation.batching)."""
    from .batching import batch_key

    batch = settings.IMAGESITE_MAX_BATCH
    jobs = claim_batch(Generation, batch_key, max_jobs=batch, size=lambda job: job.num_images, max_size=images_per_call)
    if not jobs:
        return "nothing queued"
    if len(jobs) == 1:
        return run_claimed(jobs[0], _render, label="Generation", readable=(GenerationError,))
    return run_claimed_batch(jobs, _render_batch, label="Generation", readable=(GenerationError,))


def images_per_call(first: Generation) -> int:
    """The most images a batch led by `first` may hold: IMAGESITE_MAX_BATCH, or fewer where this
    worker's memory plan holds fewer at the job's size (generation.memory.max_batch_images). On a GPU
    the plan is resolved as the renderer resolves it, from the memory this worker may use: free now
    plus what its own allocator holds (its warm weights); while a training run holds the GPU little
    is free, so the batch is small. Never raises (the first job is already claimed): 1 when unsure."""
    limit = settings.IMAGESITE_MAX_BATCH
    try:
        fits = _plan_images(first)
    except Exception:  # noqa: BLE001 - e.g. a base model gone: the job runs alone and fails readably
        log.warning("generation %s: no memory plan for a batch; it runs alone", first.pk, exc_info=True)
        return 1
    return limit if fits is None else min(limit, fits)


def _plan_images(first: Generation) -> int | None:
    from . import pipeline
    from .families import detect_family
    from .memory import max_batch_images, memory_need, resolve_profile

    device = pipeline.worker_device()
    if not device.startswith("cuda"):
        return None  # host memory: IMAGESITE_MAX_BATCH bounds it
    import torch

    source = _base_source(first)
    family = detect_family(source)
    usable = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    need = memory_need(source, family)
    profile = resolve_profile(settings.IMAGESITE_VRAM, cuda_available=True, free_vram_bytes=usable, need=need)
    return max_batch_images(profile, family, first.width, first.height, free_bytes=usable, need=need)


def _render(job: Generation) -> None:
    source = _base_source(job)
    adapters = worker_adapters(job, _subject_adapter(job))  # the subject, the prompt's LoRAs and embeddings
    inputs = load_job_inputs(job)  # decoded and cleaned before any model load: a bad file fails fast
    with _rendering([job], source) as renderer:
        render_settings = job.render_settings()
        images = renderer.render(render_settings, on_step=_on_step(job), adapter=adapters,
                                 preview=_preview_tap(job, renderer), inputs=inputs)
    _store(job, images, render_settings, renderer, adapters)


def _render_batch(jobs: list[Generation]) -> list[BaseException | None]:
    """Several compatible jobs (equal generation.batching.batch_key) in one pipeline call; each job
    stores its images and succeeds on its own. Returns, per job, None or what ended it. Out of GPU
    memory for the batch: each job renders alone (with the renderer's own lower-profile retry)."""
    import torch

    from .batching import BatchItem, render_batch

    first = jobs[0]
    adapters = worker_adapters(first, _subject_adapter(first))  # equal keys: the same subject and LoRAs
    with _rendering(jobs, _base_source(first)) as renderer:
        items = [BatchItem(job.render_settings(), preview=_preview_tap(job, renderer), on_step=_on_step(job)) for job in jobs]
        try:
            results = render_batch(renderer, items, adapters)
        except torch.cuda.OutOfMemoryError:
            results = None
    if results is None:
        return [_alone(job) for job in jobs]
    ended: list[BaseException | None] = []
    for job, item, images in zip(jobs, items, results):
        if isinstance(images, BaseException):
            ended.append(images)
            continue
        try:
            _store(job, images, item.settings, renderer, adapters)
            ended.append(None)
        except Exception as exc:  # noqa: BLE001 - this job fails; the others are stored
            ended.append(exc)
    return ended


def _alone(job: Generation) -> BaseException | None:
    try:
        _render(job)
    except Exception as exc:  # noqa: BLE001 - ended per job by the runner
        return exc
    return None


LOADING, RENDERING = "loading", "rendering"


@contextlib.contextmanager
def _rendering(jobs: list[Generation], source: str) -> Iterator:
    """The jobs' turn on the GPU (gpu_turn) with the worker's warm pipeline for `source`; a (re)load
    takes seconds to minutes, so the jobs' pages say "Loading model…" meanwhile. Neither the wait for
    the GPU nor the load is the jobs' GPU time (imagesite.runner.off_the_gpu_clock). Previews are
    temporary: gone however the render ends."""
    from . import pipeline

    with contextlib.ExitStack() as turn:
        with off_the_gpu_clock():
            turn.enter_context(gpu_turn(jobs))
            if not pipeline.is_warm(source):
                for job in jobs:
                    job.report_progress(0, job.steps, pace_starts=False, phase=LOADING)
            renderer = pipeline.get_renderer(source, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG,
                                             settings.IMAGESITE_CPU_THREADS)
        try:
            yield renderer
        finally:
            for job in jobs:
                GenerationPreview.discard(job.pk)


def _on_step(job: Generation) -> Callable[[int, int], None]:
    """The job's progress callback: throttled writes of its step (imagesite.jobs.ProgressReporter)."""
    report = ProgressReporter(job)
    return lambda step, total: report(step, total, phase=RENDERING)


def _store(job: Generation, images, render_settings, renderer, adapters) -> None:
    """Encode the job's images as the gallery keeps them (PNG parameters A1111 reads) and store them;
    the job succeeds in the same transaction."""
    from . import pipeline

    pngs = pipeline.encode_for_gallery(images, render_settings, renderer.info.name, subject_name=job.subject_name,
                                       lora_hashes=lora_hashes(adapters))
    store_images(job, pngs, render_settings.seeds, finish=job.succeed, size=images[0].size)


_turns = None  # this worker's generation.gpu_lease.WarmTurns, when it shares its GPU with training


def gpu_turn(jobs: list[Generation]):
    """Hold this worker's GPU lease for the jobs (generation.gpu_lease): while a training run has the
    GPU they wait, and their pages say so; between jobs the warm pipeline keeps it unless a run asks."""
    from . import pipeline
    from .gpu_lease import WAITING_FOR_GPU, DeviceLease, WarmTurns, lease_enabled
    from .gpus import current_settings

    global _turns
    device = pipeline.worker_device()
    if not lease_enabled(device):
        return contextlib.nullcontext()
    if _turns is None:
        _turns = WarmTurns(DeviceLease(device, "generation", current_settings().lock_dir), drop_model=pipeline.drop_renderer)

    def waiting(holder: str) -> None:
        for job in jobs:
            job.report_progress(0, job.steps, pace_starts=False, phase=WAITING_FOR_GPU)

    def stop_if_all_canceled() -> None:
        if all(job.is_canceled() for job in jobs):
            raise JobCanceled()

    return _turns.job(on_wait=waiting, should_stop=stop_if_all_canceled)


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
