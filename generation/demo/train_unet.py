"""Stage 2 of the demo build: train the UNet and the CLIP text encoder jointly on cached latents.

v-prediction on the zero-terminal-SNR schedule: at t=999 the input is pure noise and the v target is
minus the clean latent, so the only way to get the colours right is to read them from the prompt.
10% of captions are dropped to "" so classifier-free guidance works; an EMA of both networks is kept
and is what gets saved.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from .configs import train_scheduler

CFG_DROPOUT = 0.1


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (CPU, fp32)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def train_unet(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
               latents: torch.Tensor, captions: list[str], *, steps: int = 4000, seed: int = 0,
               batch_size: int = 64, lr: float = 5e-4, ema_decay: float = 0.999,
               minutes: float | None = None, checkpoint_every: int = 0,
               checkpoint_fn: Callable[[int, UNet2DConditionModel, CLIPTextModel], None] | None = None,
               log: Callable[[str], None] = print, timesteps: str = "uniform") -> dict:
    """Train ``unet`` and ``text_encoder`` in place; on return both hold the EMA weights.

    ``latents``: scaled VAE latents, float32 (N, 4, 16, 16), CPU; ``captions``: N strings.
    AdamW (``lr``, 100 warm-up steps, cosine to 10%), plain v-prediction MSE, gradient clip 1.
    Stops after ``steps`` or ``minutes`` of wall time, whichever first; the learning rate decays
    with that progress. Calls ``checkpoint_fn(step, ema_unet,
    ema_text)`` every ``checkpoint_every`` steps. Returns {"steps", "final_loss"}.

    ``timesteps``: "uniform" over 0..999, or "logit_normal" (SD3's choice: sigmoid of a standard
    normal, so most samples fall in the middle of the schedule, where outlines form, and few at the
    ends: the pure-noise end only has to learn the mean image, the clean end only fine texture).
    """
    if timesteps not in ("uniform", "logit_normal"):
        raise ValueError(f"timesteps must be 'uniform' or 'logit_normal', not {timesteps!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    noise_sched = train_scheduler()
    n_t = noise_sched.config.num_train_timesteps
    unique = sorted(set(captions)) + [""]
    index = {c: i for i, c in enumerate(unique)}
    caption_idx = torch.tensor([index[c] for c in captions])
    token_ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids  # (U, 77)
    empty_idx = index[""]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    # Progress in 0..1 drives the cosine decay: by steps, or by wall time when ``minutes`` is set
    # (then the schedule still anneals fully however fast the machine is, at the cost of exactness).
    progress = {"p": 0.0}
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress["p"]))))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    for m in (ema_unet, ema_text):
        m.requires_grad_(False)
    unet.train()
    text_encoder.train()

    start = time.monotonic()
    budget_s = None if minutes is None else 60 * minutes
    bar = tqdm(range(steps), desc="UNet+text", unit="step", mininterval=10)
    running, step = None, 0
    for step in bar:
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]
        cap = caption_idx[idx]
        drop = torch.rand(batch_size, generator=gen) < CFG_DROPOUT
        cap = torch.where(drop, torch.full_like(cap, empty_idx), cap)
        noise = torch.randn(x0.shape, generator=gen)
        if timesteps == "logit_normal":
            u = torch.sigmoid(torch.randn(batch_size, generator=gen))
            t = (u * n_t).long().clamp_(0, n_t - 1)
        else:
            t = torch.randint(0, n_t, (batch_size,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        states = text_encoder(token_ids[cap])[0]  # (B, 77, 64)
        pred = unet(xt, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        progress["p"] = min(1.0, max((step + 1) / steps,
                                     0.0 if budget_s is None else (time.monotonic() - start) / budget_s))
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        if checkpoint_fn and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint_fn(step + 1, ema_unet, ema_text)
        if progress["p"] >= 1.0:
            break
    unet.load_state_dict(ema_unet.state_dict())
    text_encoder.load_state_dict(ema_text.state_dict())
    unet.eval()
    text_encoder.eval()
    log(f"UNet+text: {step + 1} steps, loss {running:.4f}")
    return {"steps": step + 1, "final_loss": round(running or 0.0, 4)}
