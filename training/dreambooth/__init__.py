"""DreamBooth training over plain arguments: no Django, a progress callback and a cancel check.

The method (Ruiz et al. 2022) as diffusers' examples/dreambooth scripts implement it, written for
this project:

1. Load the base Stable Diffusion pipeline; build a DDPM noise schedule from its scheduler config
   (so v-prediction and the zero-terminal-SNR betas of the demo model carry over).
2. Optionally generate class images with the base model (prior preservation), cached on disk.
3. Encode the instance (and class) images once with the frozen VAE, and the prompts once with the
   text encoder when it stays frozen: each step then costs only the UNet.
4. Train: noise-prediction loss on the instance images, plus `prior_loss_weight` × the same loss on
   class images (towards the class image's own target, or the frozen base model's prediction:
   `prior_target`). LoRA (peft, on the UNet attention projections) or the whole UNet; optionally the
   rare token's embedding rows too (pivotal tuning). docs/dreambooth.md has the measurements.
5. Write the checkpoint at the very end, through a temporary name, so a cancel or a crash never
   leaves a half-written file.

Devices: float32 on the CPU. On a GPU: fp16/bf16 autocast, gradient checkpointing and
bitsandbytes' 8-bit AdamW when asked for (and installed).

The modules, by meaning: `options` (TrainingOptions, the defaults per model and method, their
check; torch-free), `progress` (what a run reports back; torch-free), `prompts`, `data`,
`sampling` (base pipeline, class and validation images), `lora` (what trains), `objective` (the
loss and the schedule), `checkpoints` (the files), `devices` (what the machine decides:
`default_options_for`, the optimizer) and `loop` (`train_dreambooth`). The token-embedding file
and swap live in generation.embeddings (inference needs them too).

The names below are re-exported lazily, so `import training.dreambooth.options` (the web process:
the training form) loads no torch; `from training.dreambooth import train_dreambooth` loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that holds it.
_EXPORTS = {
    "TrainingOptions": ".options", "MACHINE_FIELDS": ".options", "RESNET_CONV_TARGET_MODULES": ".options",
    "check_options": ".options", "method_defaults": ".options", "model_resolution": ".options",
    "default_options_for": ".devices",
    "ProgressCallback": ".progress", "TrainingCanceled": ".progress", "TrainingError": ".progress",
    "TrainingProgress": ".progress", "TrainingResult": ".progress",
    "EMPTY_PROMPT_SHARE": ".prompts", "class_prompt_for": ".prompts", "class_prompt_pool": ".prompts",
    "instance_prompts_for": ".prompts",
    "image_to_tensor": ".data",
    "TEXT_ENCODER_TARGET_MODULES": ".lora",
    "token_embedding_state": ".checkpoints",
    "train_dreambooth": ".loop",
    "LORA_WEIGHT_NAME": "training.checkpoint_names", "TOKEN_EMBEDDING_NAME": "training.checkpoint_names",
    "load_token_embedding": "generation.embeddings", "save_token_embedding": "generation.embeddings",
    "swap_token_embedding": "generation.embeddings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module holding `name` on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # the same names, eagerly, for type checkers and editors
    from generation.embeddings import load_token_embedding, save_token_embedding, swap_token_embedding

    from ..checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME
    from .checkpoints import token_embedding_state
    from .data import image_to_tensor
    from .devices import default_options_for
    from .lora import TEXT_ENCODER_TARGET_MODULES
    from .loop import train_dreambooth
    from .options import (
        MACHINE_FIELDS, RESNET_CONV_TARGET_MODULES, TrainingOptions, check_options, method_defaults,
        model_resolution,
    )
    from .progress import ProgressCallback, TrainingCanceled, TrainingError, TrainingProgress, TrainingResult
    from .prompts import EMPTY_PROMPT_SHARE, class_prompt_for, class_prompt_pool, instance_prompts_for
