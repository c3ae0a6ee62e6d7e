"""What each step is trained towards: the DreamBooth loss, the base model's own prediction (the
distillation prior), the remixed class prompts, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .options import TrainingOptions


def _lr_factor(done: int, warmup: int, options: TrainingOptions) -> float:
    """The learning rates' multiplier for the step after `done` steps: 1 throughout for
    "constant"; for "cosine" 1 during the token's warm-up, then a half cosine to 0 at the last step."""
    if options.lr_schedule == "constant" or done < warmup:
        return 1.0
    span = max(options.steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(done - warmup, span) / span))


def _remix(own: list[int], n_prompts: int, share: float, generator: torch.Generator) -> list[int]:
    """Prompt indices for a class batch: each sample keeps its own prompt, or with probability
    `share` takes a random one of the `n_prompts`."""
    swap = torch.rand(len(own), generator=generator) < share
    other = torch.randint(0, n_prompts, (len(own),), generator=generator)
    return [int(o) if s else p for s, o, p in zip(swap, other, own)]


@torch.no_grad()
def _base_prediction(unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor, conditions: dict[str, Any], weight_dtype: torch.dtype, autocast: Any) -> torch.Tensor:
    """What the untouched base model predicts: `unet` with its LoRA switched off, or a frozen copy.
    `conditions` are the UNet's keyword arguments for the batch (TextConditioning.unet_kwargs)."""
    adapters = getattr(unet, "peft_config", None) is not None
    if adapters:
        unet.disable_adapters()
    try:
        with autocast:
            return unet(noisy.to(weight_dtype), timesteps, **conditions).sample.float()
    finally:
        if adapters:
            unet.enable_adapters()


def _dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, with_prior: bool, prior_weight: float) -> torch.Tensor:
    """MSE between prediction and target, (B, C, h, w) float32 each; with prior preservation the
    batch is [instance; class] halves and the class half's MSE is added times `prior_weight`."""
    if not with_prior:
        return F.mse_loss(pred, target)
    pred_inst, pred_class = pred.chunk(2)
    target_inst, target_class = target.chunk(2)
    return F.mse_loss(pred_inst, target_inst) + prior_weight * F.mse_loss(pred_class, target_class)

