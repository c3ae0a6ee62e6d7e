"""What a run draws with a pipeline: the base model it loads, class images for prior preservation
(cached on disk with their prompts), and validation samples of the weights as they train."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .options import TrainingOptions
from .progress import ProgressCallback, TrainingCanceled, TrainingError, TrainingProgress

logger = logging.getLogger(__name__)


# The pipeline classes training knows: SD 1.x / 2.x and SDXL (their UNet, text encoder(s), VAE).
TRAINABLE_PIPELINES = {"StableDiffusionPipeline": "SD 1.x / 2.x", "StableDiffusionXLPipeline": "SDXL"}
GIB = 1024**3


def _load_pipeline(base_model: Any, report: ProgressCallback | None = None) -> Any:
    """A fresh float32 pipeline on the CPU, of the class the model's model_index.json names
    (StableDiffusionPipeline or StableDiffusionXLPipeline), from a diffusers folder, a single
    `.safetensors`/`.ckpt` file (converted once into a cached folder, reported to `report` as the
    "preparing_model" phase) or a hub id.

    An already-loaded pipeline is used as is: it must be a private copy (its UNet gets trained),
    never the warm generation pipeline. Other families raise TrainingError naming what it is.
    """
    from diffusers import DiffusionPipeline

    if isinstance(base_model, DiffusionPipeline):
        pipe = base_model
    else:
        path = Path(base_model)
        if path.suffix.lower() in (".ckpt", ".safetensors"):
            path = _converted_folder(path, report or (lambda p: None))
        common: dict[str, Any] = {"torch_dtype": torch.float32}
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
            if "safety_checker" in index:  # SD 1.x/2.x folders name one; training never draws with it
                common.update(safety_checker=None, requires_safety_checker=False)
            _check_class(str(index.get("_class_name", "?")))
            pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **common)
        else:
            pipe = DiffusionPipeline.from_pretrained(str(base_model), **common)
    _check_class(type(pipe).__name__)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_class(name: str) -> None:
    if name not in TRAINABLE_PIPELINES:
        raise TrainingError(
            f"This base model is a {name}; subjects can be trained on {', '.join(TRAINABLE_PIPELINES.values())} models only."
        )


def _converted_folder(path: Path, report: ProgressCallback) -> Path:
    """The cached diffusers folder of a single checkpoint file (generation.model_cache converts
    it once; later runs reuse it), with its progress reported as the "preparing_model" phase."""
    try:
        from generation.model_cache import diffusers_folder
    except ImportError:  # generation's conversion cache is not there yet
        raise ValueError(
            f"{path.name} is a single checkpoint file: load it with from_single_file and a local "
            "config folder, and pass the pipeline"
        ) from None
    from generation.errors import GenerationError

    def say(text: Any) -> None:
        report(TrainingProgress(phase="preparing_model", step=0, total=1, message=str(text)))

    say(f"Preparing {path.name} for training (converted once, then reused)")
    try:
        folder = Path(diffusers_folder(path, progress=say))
    except GenerationError as exc:
        raise TrainingError(str(exc)) from None
    report(TrainingProgress(phase="preparing_model", step=1, total=1, message=f"{path.name} is ready"))
    return folder


def _load_class_images(folder: Path | None, wanted: Sequence[str]) -> tuple[list[tuple[Image.Image, str]], list[str], int]:
    """Reuse cached class images for the `wanted` prompts (one image per entry).

    A cached image is `class_NNNNN.png` with its prompt in `class_NNNNN.txt`. Returns the images
    found (RGB PIL, with their prompts), the prompts still to generate, and the next free index.
    """
    if folder is None or not folder.is_dir():
        return [], list(wanted), 0
    cached: dict[str, list[Path]] = {}
    next_index = 0
    for path in sorted(folder.glob("class_*.png")):
        caption = path.with_suffix(".txt")
        if caption.exists():
            cached.setdefault(caption.read_text().strip(), []).append(path)
        with contextlib.suppress(ValueError):
            next_index = max(next_index, int(path.stem.split("_")[1]) + 1)
    found, missing = [], []
    for prompt in wanted:
        if cached.get(prompt):
            with Image.open(cached[prompt].pop(0)) as im:
                found.append((im.convert("RGB"), prompt))
        else:
            missing.append(prompt)
    return found, missing, next_index


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _generate_class_images(
    pipe: Any, prompts: Sequence[str], *, start_index: int, options: TrainingOptions, folder: Path | None,
    progress: ProgressCallback, should_cancel: Callable[[], bool], done_before: int, total: int,
    device: torch.device, dtype: torch.dtype = torch.float16, low_memory: bool = False,
) -> list[tuple[Image.Image, str]]:
    """Generate one base-model image per prompt and cache each as PNG + .txt in `folder`.

    Images are RGB PIL at `options.resolution`. Generation is seeded per image (options.seed +
    index), so a rerun makes the same images. Cancel is checked between batches. The memory plan
    is the run's (`_class_image_plan`): on the CPU float32 and batches of 4 as ever; on a GPU
    `dtype` (fp16, or the run's bf16) and what fits its free memory; afterwards every model holds
    its own float32 weights on the CPU again.
    """
    weights = sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    plan = _class_image_plan(device, dtype, options.resolution, low_memory, weights * 2)
    logger.info("class images: %s", plan)
    made: list[tuple[Image.Image, str]] = []
    with _rendering_on(pipe, device, plan):
        for start in range(0, len(prompts), plan.batch):
            if should_cancel():
                raise TrainingCanceled()
            chunk = list(prompts[start:start + plan.batch])
            indices = [start_index + start + i for i in range(len(chunk))]
            generators = [torch.Generator("cpu").manual_seed(options.seed * 100_003 + i) for i in indices]
            images = pipe(
                chunk, num_inference_steps=options.class_inference_steps, generator=generators,
                height=options.resolution, width=options.resolution,
            ).images
            for index, image, prompt in zip(indices, images, chunk):
                made.append((image, prompt))
                if folder is not None:
                    _save_class_image(folder, index, image, prompt)
            progress(TrainingProgress(phase="class_images", step=done_before + len(made), total=total))
    return made


def _save_class_image(folder: Path, index: int, image: Image.Image, prompt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    _write_atomically(folder / f"class_{index:05d}.txt", prompt.encode())
    _write_atomically(folder / f"class_{index:05d}.png", buf.getvalue())


@dataclass(frozen=True)
class ClassImagePlan:
    """How class images are drawn: the models' dtype, images per call, and diffusers' memory
    features (VAE tiling; model CPU offload: one model on the GPU at a time). VAE slicing is always
    on for a GPU. Attention slicing never: PyTorch's SDPA attention already needs less (on an H200,
    SDXL at 1024 px with attention slicing drew one image in 5.1 GiB above its weights, four
    without it in 4.1 GiB)."""

    dtype: torch.dtype
    batch: int
    vae_tiling: bool = False
    offload: bool = False


def _class_image_plan(device: torch.device, dtype: torch.dtype, resolution: int, low_memory: bool, weights_bytes: int) -> ClassImagePlan:
    """The plan that fits `device`, read before any model is there (`torch.cuda.mem_get_info`).

    `weights_bytes` is the pipeline in `dtype`. Beside its weights a render needs about 1.3 GiB at
    512 px, growing with the pixels (5.2 GiB at 1024), batch 1 to 4 alike (the VAE decodes one
    image at a time). Measured on an H200 with random weights, SDPA attention, fp16: SD 1.5 at
    512 px 0.7 GiB; SDXL at 1024 px 4.1 GiB for four images, 5.1 GiB for one, and 5.4 GiB in all
    (weights included) with model CPU offload. So: all on the GPU when that fits, batch 4 with
    1 GiB to spare on a card of 8 GiB or more, else 1; model CPU offload and VAE tiling when it
    does not fit, and on the out-of-memory retry (`low_memory`)."""
    if device.type != "cuda":
        return ClassImagePlan(torch.float32, 4)
    if low_memory:
        return ClassImagePlan(dtype, 1, vae_tiling=True, offload=True)
    free, total = torch.cuda.mem_get_info(device)
    spare = free - weights_bytes
    need = 1.3 * GIB * (resolution / 512) ** 2
    if spare < need:
        return ClassImagePlan(dtype, 1, vae_tiling=True, offload=True)
    return ClassImagePlan(dtype, 4 if spare >= need + GIB and total >= 8 * GIB else 1)


@contextlib.contextmanager
def _rendering_on(pipe: Any, device: torch.device, plan: ClassImagePlan) -> Iterator[None]:
    """The pipeline set up for `plan` for the block. In float32 (the CPU's plan): on `device` as it
    is. In half precision (a GPU's plan): the models in `plan.dtype`, on `device` (or offloaded to
    it one at a time), with VAE slicing and the plan's features; afterwards back to the very float32
    CPU tensors they had (kept by reference: no precision lost, no copy made) and no feature left on."""
    if plan.dtype == torch.float32:
        pipe.to(device)
        yield
        return
    modules = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    kept = {name: m.state_dict() for name, m in modules.items()}  # the CPU tensors, by reference
    try:
        for m in modules.values():  # offloaded models wait on the CPU, already in half precision
            m.to(*(() if plan.offload else (device,)), plan.dtype)
        if plan.offload:
            pipe.enable_model_cpu_offload(device=device)
        pipe.vae.enable_slicing()
        if plan.vae_tiling:
            pipe.vae.enable_tiling()
        yield
    finally:
        if plan.offload:
            pipe.remove_all_hooks()
        pipe.vae.disable_tiling()
        pipe.vae.disable_slicing()
        for name, m in modules.items():
            m.load_state_dict(kept[name], assign=True)
        del kept
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def validation_embeddings(pipe: Any, prompts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The validation prompts encoded once by the frozen text encoder(s), as the pipeline's call
    takes them (`prompt_embeds`, `negative_prompt_embeds`, and SDXL's pooled pair), so the
    encoders need not stay on the GPU for validation. The encoders must be on `device` now."""
    with torch.no_grad():
        out = pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
    names = ["prompt_embeds", "negative_prompt_embeds"]
    if len(out) == 4:  # SDXL
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(names, out))


def _validation_images(
    pipe: Any, trained: Sequence[Any], options: TrainingOptions, autocast: Any, embeddings: dict[str, torch.Tensor] | None,
) -> list[Image.Image]:
    """Sample one image per validation prompt with the weights as they are now (fixed seed, so
    images are comparable across steps): RGB PIL at `options.resolution`. `trained` are the
    models in training mode (back to it afterwards); `embeddings` the prompts already encoded
    (`validation_embeddings`), or None to encode them with the text encoders as they are now."""
    for model in trained:
        model.eval()
    prompt_args: dict[str, Any] = dict(embeddings) if embeddings else {"prompt": list(options.validation_prompts)}
    try:
        with autocast, torch.no_grad():
            return list(pipe(
                **prompt_args, num_inference_steps=options.validation_inference_steps,
                generator=torch.Generator("cpu").manual_seed(options.seed),
                height=options.resolution, width=options.resolution,
            ).images)
    finally:
        for model in trained:
            model.train()
