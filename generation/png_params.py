"""PNG files with AUTOMATIC1111's `parameters` text, and the small thumbnails the gallery shows.

Torch-free (PIL and hashlib only): the worker's pipeline re-exports these, and tests and scripts can
read or write the text without importing diffusers.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .modelinfo import SCHEDULERS

if TYPE_CHECKING:
    from .pipeline import RenderSettings


def a1111_parameters(s: "RenderSettings", seed: int, model_name: str, *, subject_name: str = "",
                     lora_hashes: Mapping[str, str] | None = None) -> str:
    """The `parameters` text other tools (AUTOMATIC1111, ComfyUI, civitai) read back.

    The prompt stays as typed. A subject adds two keys after the usual ones: `Lora hashes`
    ("<token>: <short hash>", the key AUTOMATIC1111 writes and civitai reads to find the LoRA) and
    our own `Subject` (AUTOMATIC1111 keeps keys it does not know as they are), so the file says what
    the image was made with."""
    lines = [s.prompt]
    if s.negative_prompt:
        lines.append(f"Negative prompt: {s.negative_prompt}")
    label = SCHEDULERS[s.scheduler].label
    fields = [f"Steps: {s.steps}", f"Sampler: {label}", f"CFG scale: {s.guidance_scale:g}", f"Seed: {seed}",
              f"Size: {s.width}x{s.height}", f"Model: {_quote(model_name)}", *_studio_fields(s)]
    if lora_hashes:
        fields.append(f"Lora hashes: {json.dumps(', '.join(f'{name}: {digest}' for name, digest in lora_hashes.items()))}")
    if subject_name:
        fields.append(f"Subject: {_quote(subject_name)}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


HIRES_UPSCALER_NAMES = {"latent": "Latent", "lanczos": "Lanczos"}  # A1111's names for them


def _studio_fields(s: "RenderSettings") -> list[str]:
    """img2img, inpainting and hires fix as A1111's create_infotext writes them: `Denoising strength`
    after the model, then its extras in the order A1111 adds them (`Mask blur`; `Hires upscale`,
    `Hires steps` when not 0, `Hires upscaler`). `Size` stays the first pass's size, as in A1111."""
    mode = getattr(s, "mode", "txt2img")
    fields = []
    if mode in ("img2img", "inpaint"):
        fields.append(f"Denoising strength: {s.strength:g}")
        if mode == "inpaint":
            fields.append(f"Mask blur: {s.mask_blur}")
    elif getattr(s, "hires_scale", 1.0) > 1:
        fields += [f"Denoising strength: {s.hires_strength:g}", f"Hires upscale: {s.hires_scale:g}"]
        if s.hires_steps:
            fields.append(f"Hires steps: {s.hires_steps}")
        fields.append(f"Hires upscaler: {HIRES_UPSCALER_NAMES.get(s.hires_upscaler, s.hires_upscaler)}")
    return fields


def _quote(value: str) -> str:
    """A value as AUTOMATIC1111's infotext quotes it: bare unless a comma, colon, quote or line
    break would end it early, then a JSON string (its parser reads those back)."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def lora_short_hash(path: str) -> str:
    """The first 10 hex digits of the file's sha256 (civitai's "AutoV2" hash, which it looks LoRAs up
    by). Read in 1 MiB blocks; remembered per (path, size, mtime), so a warm worker hashes a file once."""
    stat = os.stat(path)
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)[:10]


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_png(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def encode_for_gallery(images: list[Image.Image], s: "RenderSettings", model_name: str, *, subject_name: str = "",
                       lora_hashes: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """(PNG with parameters, thumbnail PNG) for each image of a job; image i has seed s.seed + i."""
    return [
        (encode_png(image, a1111_parameters(s, seed, model_name, subject_name=subject_name, lora_hashes=lora_hashes)),
         encode_thumbnail(image))
        for image, seed in zip(images, s.seeds)
    ]


def encode_thumbnail(image: Image.Image, max_side: int = 256) -> bytes:
    """A small PNG for gallery grids; tiny images are kept as they are (pages upscale them crisply)."""
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
