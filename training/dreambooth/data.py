"""Images and prompts as the UNet takes them: tensors, cached VAE latents, token ids, batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


def crop_geometry(size: tuple[int, int], resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where `image_to_tensor` takes its square from an image of `size` (width, height): the
    resized (width, height) and the crop's (top, left) in it, in pixels (SDXL's time ids need it)."""
    width, height = size
    scale = resolution / min(width, height)
    resized = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return resized, ((resized[1] - resolution) // 2, (resized[0] - resolution) // 2)


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, resolution, resolution) in [-1, 1] on the CPU.

    The shorter side is resized to `resolution` (Lanczos), then the centre is cropped.
    """
    image = image.convert("RGB")
    resized, (top, left) = crop_geometry(image.size, resolution)
    image = image.resize(resized, Image.Resampling.LANCZOS)
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def size_conditions(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """SDXL's time ids for each image as `image_to_tensor` crops it: (N, 6) float32 on the CPU
    (original h, w; crop top, left; target h, w), as diffusers' SDXL DreamBooth example computes them."""
    from .conditioning import time_ids

    rows = []
    for im in images:
        _, crop = crop_geometry(im.size, resolution)
        rows.append(time_ids((im.height, im.width), crop, resolution))
    return torch.stack(rows)


@torch.no_grad()
def _encode_images(
    vae: Any, images: Sequence[Image.Image], resolution: int, device: torch.device, dtype: torch.dtype, chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode images once with the frozen VAE, `chunk` at a time: latent mean and std, each
    (N, 4, res/f, res/f), float32 on `device`."""
    means, stds = [], []
    for start in range(0, len(images), chunk):
        pixels = torch.stack([image_to_tensor(im, resolution) for im in images[start:start + chunk]])
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _sample_latents(vae: Any, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from the cached VAE posterior and scale them as the UNet expects: (B, 4, h, w) float32."""
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    latents = mean + std * noise
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


class _Batches:
    """Endless shuffled batches of indices into N items (each epoch a new permutation)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self.batch_size:
            self._queue += torch.randperm(self.n, generator=self.generator).tolist()
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        return batch

