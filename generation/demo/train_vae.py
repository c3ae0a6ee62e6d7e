"""Stage 1 of the demo build: train the AutoencoderKL on freshly drawn shapes, then encode a latent set."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from .data import make_dataset

KL_WEIGHT = 1e-6  # just enough to keep the posterior near N(0, 1) scale; reconstruction dominates


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) in 0..255 -> float32 (N, 3, H, W) in -1..1, CPU."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Reconstruction PSNR in dB of ``images`` (N, 3, H, W in -1..1) through the posterior mean."""
    with torch.no_grad():
        rec = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    mse = F.mse_loss((rec + 1) / 2, (images + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def train_vae(vae: AutoencoderKL, *, steps: int = 3000, seed: int = 0, batch_size: int = 16,
              lr: float = 2e-3, minutes: float | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train ``vae`` in place (CPU, fp32) on batches of newly drawn 64x64 images.

    The first 80% of steps see random 32x32 crops (4x cheaper; the VAE is convolutional apart from
    its mid-block attention), the rest full 64x64 images at half the batch.
    Loss: L1 + MSE on pixels in -1..1 plus a tiny KL term; AdamW with cosine decay to 5% of ``lr``.
    Stops after ``steps`` or ``minutes`` of wall time, whichever first; the learning rate and
    the switch to full-size images follow that progress. Returns {"steps", "psnr_db"}.
    """
    torch.manual_seed(seed)
    held_images, _ = make_dataset(256, seed=seed + 1000)
    held = to_tensor(held_images)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    progress = {"p": 0.0}  # 0..1 by steps, or by wall time when ``minutes`` is set
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress["p"])))
    start = time.monotonic()
    budget_s = None if minutes is None else 60 * minutes
    vae.train()
    bar = tqdm(range(steps), desc="VAE", unit="step", mininterval=5)
    step = 0
    for step in bar:
        full = progress["p"] >= 0.8
        images, _ = make_dataset(batch_size // 2 if full else batch_size, seed=seed * 1_000_003 + step)
        x = to_tensor(images)
        if not full:
            oy, ox = (int(v) for v in torch.randint(0, 33, (2,)))
            x = x[:, :, oy:oy + 32, ox:ox + 32]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        progress["p"] = min(1.0, max((step + 1) / steps,
                                     0.0 if budget_s is None else (time.monotonic() - start) / budget_s))
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if progress["p"] >= 1.0:
            break
    vae.eval()
    score = psnr(vae, held)
    log(f"VAE: {step + 1} steps, held-out PSNR {score:.1f} dB")
    return {"steps": step + 1, "psnr_db": round(score, 2)}


def encode_dataset(vae: AutoencoderKL, *, n: int = 16000, seed: int = 1, batch_size: int = 500,
                   log: Callable[[str], None] = print) -> tuple[torch.Tensor, list[str]]:
    """Draw ``n`` training images, encode them to posterior-mean latents and set the VAE's
    ``scaling_factor`` to 1/std of those latents (SD's convention: scaled latents have unit variance).

    Returns scaled latents, float32 (n, 4, 16, 16) on the CPU, and the ``n`` captions.
    """
    from .data import caption

    images, combos = make_dataset(n, seed=seed)
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc="encode", unit="batch", mininterval=5):
            chunks.append(vae.encode(to_tensor(images[i:i + batch_size])).latent_dist.mode())
    latents = torch.cat(chunks)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    log(f"encoded {n} images; latent mean {latents.mean():.3f}, scaling_factor {scale:.4f}")
    return latents * scale, [caption(*c) for c in combos]
