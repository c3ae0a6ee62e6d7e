"""What a run draws with a pipeline: the base model it loads, class images for prior preservation
(cached on disk with their prompts), and validation samples of the weights as they train."""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .options import TrainingOptions
from .progress import ProgressCallback, TrainingCanceled, TrainingProgress


def _load_pipeline(base_model: Any) -> Any:
    """A fresh float32 StableDiffusionPipeline on the CPU from a diffusers folder or a hub id.

    An already-loaded pipeline is used as is: it must be a private copy (its UNet gets trained),
    never the warm generation pipeline. Single-file checkpoints: load them with
    `from_single_file(..., config=...)` and pass the pipeline.
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    if isinstance(base_model, DiffusionPipeline):
        return base_model
    path = Path(base_model)
    common: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False, "torch_dtype": torch.float32}
    if path.is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common)
    elif path.suffix.lower() in (".ckpt", ".safetensors"):
        raise ValueError(
            f"{path.name} is a single checkpoint file: load it with from_single_file and a local "
            "config folder, and pass the pipeline"
        )
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(base_model), **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
) -> list[tuple[Image.Image, str]]:
    """Generate one base-model image per prompt (batches of 4) and cache each as PNG + .txt in `folder`.

    Images are RGB PIL at the pipeline's default size. Generation is seeded per image
    (options.seed + index), so a rerun makes the same images. Cancel is checked between batches.
    """
    made: list[tuple[Image.Image, str]] = []
    for start in range(0, len(prompts), 4):
        if should_cancel():
            raise TrainingCanceled()
        chunk = list(prompts[start:start + 4])
        indices = [start_index + start + i for i in range(len(chunk))]
        generators = [torch.Generator("cpu").manual_seed(options.seed * 100_003 + i) for i in indices]
        images = pipe(
            chunk, num_inference_steps=options.class_inference_steps, generator=generators,
            height=options.resolution, width=options.resolution,
        ).images
        for index, image, prompt in zip(indices, images, chunk):
            made.append((image, prompt))
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                image.save(buf, "PNG")
                _write_atomically(folder / f"class_{index:05d}.txt", prompt.encode())
                _write_atomically(folder / f"class_{index:05d}.png", buf.getvalue())
        progress(TrainingProgress(phase="class_images", step=done_before + len(made), total=total))
    return made


def _validation_images(pipe: Any, unet: Any, text_encoder: Any, train_te: bool, options: TrainingOptions, autocast: Any) -> list[Image.Image]:
    """Sample one image per validation prompt with the weights as they are now (fixed seed, so
    images are comparable across steps): RGB PIL at `options.resolution`."""
    unet.eval()
    text_encoder.eval()
    try:
        with autocast, torch.no_grad():
            return list(pipe(
                list(options.validation_prompts), num_inference_steps=options.validation_inference_steps,
                generator=torch.Generator("cpu").manual_seed(options.seed),
                height=options.resolution, width=options.resolution,
            ).images)
    finally:
        unet.train()
        if train_te:
            text_encoder.train()
