"""Stable Diffusion inference for the worker: load once, keep warm, run jobs with progress and cancel.

No Django here: plain arguments in, PIL images out. The web process never imports this module (it
costs ~5 s and ~450 MB to import diffusers); it reads model facts from `modelinfo` instead.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .adapters import Adapter, Adapters, LoadedAdapters
from .errors import GenerationError
from .families import Family, detect_family
from .inputs import hires_size
from .memory import PROFILES, MemoryPlan, lower_profile, memory_need, plan_memory, resolve_profile
from .modelinfo import SCHEDULERS, describe_model, model_kind
from .pipeline_modes import ImageInputs, ModePipes, render as render_passes
from .png_params import a1111_parameters, encode_for_gallery, encode_png, encode_thumbnail  # noqa: F401 (re-exported)
from .prompt_embeds import encode_prompt

log = logging.getLogger("generation.pipeline")
__all__ = ["PROFILES", "MemoryPlan", "lower_profile", "plan_memory", "resolve_profile", "GenerationError",
           "Renderer", "RenderSettings", "ImageInputs", "Adapter", "get_renderer", "is_warm", "encode_for_gallery",
           "a1111_parameters", "encode_png", "encode_thumbnail"]



# --- loading -----------------------------------------------------------------------------------
def worker_device() -> str:
    """The device this worker renders on: its pinned GPU ("cuda:N") when generation.gpus says so,
    else "cuda" when there is one, else "cpu"."""
    try:
        from .gpus import worker_device as pinned
    except ImportError:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return pinned()


def _load(source: str, plan: MemoryPlan, single_file_config: str | None, family: Family):
    """The family's pipeline class around `source` (folder, single file or hub id), with the plan applied."""
    import diffusers

    dtype = torch.float16 if plan.half_precision else torch.float32
    kind = model_kind(source)
    common: dict = {"dtype": dtype}
    if family.takes_safety_checker:  # SDXL's pipelines have none
        common |= {"safety_checker": None, "requires_safety_checker": False}
    pipeline_class = getattr(diffusers, family.pipeline_class)
    if kind == "folder":
        try:
            pipe = pipeline_class.from_pretrained(source, local_files_only=True, **common)
        except (OSError, ValueError, KeyError) as exc:
            raise GenerationError(f"{Path(source).name} ({family.label}) could not be loaded: {str(exc).splitlines()[0]}") from exc
    elif kind == "single_file":  # offline, safe with pickled .ckpt extras, readable errors
        from .single_file import load_single_file_pipeline

        pipe = load_single_file_pipeline(source, single_file_config, family=family, **common)
    else:  # a hub id: only works for users who are online
        pipe = pipeline_class.from_pretrained(source, **common)
    pipe.set_progress_bar_config(disable=True)
    _apply_plan(pipe, plan)
    return pipe


def _apply_plan(pipe, plan: MemoryPlan) -> None:
    for feature in plan.skipped:
        log.info("memory profile %s: %s needs a GPU, skipped on this machine", plan.profile, feature)
    if plan.sequential_cpu_offload:
        pipe.enable_sequential_cpu_offload(device=plan.device)
    elif plan.model_cpu_offload:
        pipe.enable_model_cpu_offload(device=plan.device)
    else:
        pipe.to(plan.device)
    if plan.attention_slicing:
        pipe.enable_attention_slicing()
    if plan.vae_slicing:
        pipe.vae.enable_slicing()
    if plan.vae_tiling:
        pipe.vae.enable_tiling()


# --- running -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderSettings:
    prompt: str
    negative_prompt: str
    seed: int  # image i uses seed + i, as AUTOMATIC1111 does
    steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str  # a key of modelinfo.SCHEDULERS
    num_images: int = 1
    # img2img and inpainting (generation.pipeline_modes): what the job's input is, how much of it is
    # redrawn (0-1) and how far the mask's edge is blurred (px).
    mode: str = "txt2img"  # "txt2img" | "img2img" | "inpaint"
    strength: float = 0.75
    mask_blur: int = 4
    # Hires fix: 1.0 = off; else the first pass is upscaled ("latent" | "lanczos") by hires_scale and
    # refined at hires_strength for hires_steps (0: as many as steps).
    hires_scale: float = 1.0
    hires_upscaler: str = "latent"
    hires_strength: float = 0.7
    hires_steps: int = 0

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the images made: the job's size, or the hires pass's."""
        if self.hires_scale <= 1:
            return self.width, self.height
        return hires_size(self.width, self.height, self.hires_scale)


ProgressCallback = Callable[[int, int], None]




class Renderer:
    """One base pipeline, loaded once per worker process and reused for every job."""

    def __init__(self, source: str, requested_profile: str = "auto", single_file_config: str | None = None, cpu_threads: int | None = None):
        self.source = source
        self.single_file_config = single_file_config
        self.family = detect_family(source)  # a readable error for unsupported or damaged files
        self.device = worker_device()
        cuda = self.device.startswith("cuda")
        if cpu_threads and not cuda:
            torch.set_num_threads(cpu_threads)  # process-wide: the worker renders one job at a time
        free = torch.cuda.mem_get_info(self.device)[0] if cuda else 0
        need = memory_need(source, self.family)
        self.profile = resolve_profile(requested_profile, cuda_available=cuda, free_vram_bytes=free, need=need)
        self.info = describe_model(source)
        started = time.perf_counter()
        self.pipe = _load(source, self._plan(self.profile), single_file_config, self.family)
        # The loaded scheduler's config: each job's sampler is built from it, keeping the model's
        # prediction type (v for SD 2.x 768) and schedule.
        self.base_scheduler_config = dict(self.pipe.scheduler.config)
        self.adapters = LoadedAdapters(self.pipe)  # subjects' LoRAs kept loaded, switched per job
        self.modes = ModePipes(self.pipe)  # img2img/inpaint siblings sharing the base's weights
        self.lock = threading.Lock()
        self.preview = None  # the running job's generation.previews.PreviewTap, if it wants previews
        self.inputs = ImageInputs()  # the running job's input image and mask (img2img, inpainting)
        log.info("loaded %s (%s) with profile %s on %s in %.1f s (estimated need %.1f GB, %.1f GB free)", source,
                 self.family.label, self.profile, self.device, time.perf_counter() - started, need.full_bytes / 1e9, free / 1e9)

    def _plan(self, profile: str) -> MemoryPlan:
        return plan_memory(profile, cuda_available=self.device.startswith("cuda"), device=self.device)

    def _set_scheduler(self, key: str) -> None:
        import diffusers

        if key not in SCHEDULERS:
            raise GenerationError(f"Unknown scheduler {key!r}.")
        choice = SCHEDULERS[key]
        cls = getattr(diffusers, choice.class_name)
        self.pipe.scheduler = cls.from_config(self.base_scheduler_config, **dict(choice.options))

    def _reload(self, profile: str) -> None:
        del self.pipe
        _empty_cuda_cache()
        self.profile = profile
        self.pipe = _load(self.source, self._plan(profile), self.single_file_config, self.family)
        self.adapters = LoadedAdapters(self.pipe)
        self.modes = ModePipes(self.pipe)

    def _call_pipe(self, s: RenderSettings, on_step: ProgressCallback | None) -> list[Image.Image]:
        preview, inputs = self.preview, self.inputs
        if preview is not None:  # keeps each step's x0 estimate from this job's scheduler
            preview.attach(self.pipe.scheduler)

        def step_end(step: int, total: int, latents) -> None:  # steps of the whole job (both hires passes)
            if on_step is not None:
                on_step(step, total)  # may raise to cancel at this step
            if preview is not None:
                preview.step_end(step, total, latents)

        # prompts in AUTOMATIC1111's syntax, in 75-token chunks (never cut at 77); seeds drawn on the
        # CPU give the same noise on every machine
        embeds = encode_prompt(self.pipe, s.prompt, s.negative_prompt or None)
        return render_passes(self.modes, s, inputs, embeds, s.seeds, step_end)

    def render(self, s: RenderSettings, on_step: ProgressCallback | None = None, adapter: Adapter | None = None, preview=None,
               inputs: ImageInputs | None = None) -> list[Image.Image]:
        """Run one job: returns `num_images` RGB PIL images of `s.output_size` px (`width`×`height`
        unless hires fix). `inputs` carries img2img/inpainting's decoded image and mask.

        `on_step(step, total)` is called after every denoising step; an exception it raises (cancel)
        propagates out and nothing is returned. `adapter` applies a subject for this job only: it is
        switched off again whatever happens, so it never reaches the next job. A CUDA out-of-memory
        error frees the cache and retries once a profile lower; a second one becomes a
        GenerationError naming size and profile. `preview` (a generation.previews.PreviewTap) gets
        the x0 estimate after each step and makes the live previews."""
        with self.lock:
            self.preview = preview  # this job's (one job at a time under the lock); _call_pipe reads it
            self._set_scheduler(s.scheduler)
            self.inputs = inputs or ImageInputs()  # this job's, read by _call_pipe like the preview
            try:
                return self._attempt_or_retry(s, on_step, adapter)
            finally:  # the warm renderer keeps no job's decoded inputs nor its preview's last x0 (GPU) alive
                self.preview, self.inputs = None, ImageInputs()

    def _attempt_or_retry(self, s: RenderSettings, on_step: ProgressCallback | None, adapter: Adapters) -> list[Image.Image]:
        """`_attempt`, and on CUDA out-of-memory once more a profile lower (see `render`)."""
        try:
            return self._attempt(s, on_step, adapter)
        except torch.cuda.OutOfMemoryError:
            tried = self.profile
            _empty_cuda_cache()
            lower = lower_profile(tried)
            if lower is None:
                raise GenerationError(_oom_message(s, tried)) from None
            log.warning("out of GPU memory at %sx%s with profile %s; retrying with %s", *s.output_size, tried, lower)
            self._reload(lower)
            self._set_scheduler(s.scheduler)
            try:
                return self._attempt(s, on_step, adapter)
            except torch.cuda.OutOfMemoryError:
                _empty_cuda_cache()
                raise GenerationError(_oom_message(s, lower)) from None

    def _attempt(self, s: RenderSettings, on_step: ProgressCallback | None, adapter: Adapters) -> list[Image.Image]:
        """One pipeline call with the job's adapters (a subject, the prompt's LoRAs and embeddings:
        one Adapter or a list) put onto the pipeline as it is now (a retry after a reload puts them
        onto the fresh one) and taken off again whatever happens. Embeddings' words in the prompts
        become the tokens added for them (generation.adapters); the PNG keeps the prompt as typed."""
        with self.adapters.applied(adapter) as rewrite:
            return self._call_pipe(replace(s, prompt=rewrite(s.prompt), negative_prompt=rewrite(s.negative_prompt)), on_step)


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom_message(s: RenderSettings, profile: str) -> str:
    return (
        f"Out of GPU memory making {s.num_images} image(s) at {s.output_size[0]}×{s.output_size[1]} with the "
        f"'{profile}' memory profile. Try a smaller size, fewer images, or IMAGESITE_VRAM=low."
    )


_renderer: Renderer | None = None
_renderer_lock = threading.Lock()


def is_warm(source: str) -> bool:
    """Whether this worker process already holds `source` loaded (no load before the next job)."""
    renderer = _renderer
    return renderer is not None and renderer.source == source


def get_renderer(source: str, requested_profile: str = "auto", single_file_config: str | None = None, cpu_threads: int | None = None) -> Renderer:
    """The worker's warm renderer; built on first use and rebuilt only if the model setting changes."""
    global _renderer
    with _renderer_lock:
        if _renderer is None or _renderer.source != source:
            _renderer = None  # drop the old weights before loading new ones
            _renderer = Renderer(source, requested_profile, single_file_config, cpu_threads)
        return _renderer


def drop_renderer() -> None:
    """Free the warm pipeline (the GPU is another cluster's turn: generation.gpu_lease); the next
    job loads it again."""
    global _renderer
    with _renderer_lock:
        _renderer = None
    import gc

    gc.collect()
    _empty_cuda_cache()
