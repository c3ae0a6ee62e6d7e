"""What trains: LoRA adapters (which UNet modules get one), the whole UNet, the token's rows, and
the optimizer's parameter groups (LoRA+ puts the B matrices in a faster one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .devices import _move
from .options import TrainingOptions

TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _prepare_trainable(
    unet: Any, text_encoders: Sequence[Any], options: TrainingOptions, device: torch.device, weight_dtype: torch.dtype,
) -> list[dict[str, Any]]:
    """Attach LoRA adapters or unfreeze the UNet (and the text encoders: one, or SDXL's two);
    return optimizer param groups.

    Trainable weights are float32 on `device` even under mixed precision (frozen base weights of a
    LoRA run are cast to `weight_dtype`), so the optimizer never steps in half precision.
    """
    from peft import LoraConfig, inject_adapter_in_model

    alpha = options.lora_alpha or options.lora_rank
    te_lr = options.text_encoder_learning_rate or options.learning_rate
    encoders = list(text_encoders) if options.train_text_encoder else []
    if options.method == "lora":
        _move(unet, device, weight_dtype)
        unet.add_adapter(LoraConfig(
            r=options.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian",
            target_modules=_unet_lora_targets(unet, options),
        ))
        for encoder in encoders:
            _move(encoder, device, weight_dtype)
            # peft directly: transformers 5's `add_adapter` insists on a newer peft than we pin.
            inject_adapter_in_model(LoraConfig(
                r=options.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian",
                target_modules=TEXT_ENCODER_TARGET_MODULES,
            ), encoder)
    else:
        _move(unet, device, torch.float32)
        unet.requires_grad_(True)
        for encoder in encoders:
            _move(encoder, device, torch.float32)
            encoder.requires_grad_(True)
    for model in [unet, *encoders]:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if options.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in encoders:
            encoder.gradient_checkpointing_enable()
    groups = _param_groups(unet, options.learning_rate, options.lora_plus_ratio)
    for encoder in encoders:
        groups += _param_groups(encoder, te_lr, options.lora_plus_ratio)
    return groups


def _param_groups(model: Any, lr: float, lora_plus_ratio: float) -> list[dict[str, Any]]:
    """The model's trainable weights as optimizer groups: one at `lr`, or, with LoRA+ (Hayou et al.
    2024; `lora_plus_ratio` != 1), the LoRA's B matrices in a second group at `lr * lora_plus_ratio`.
    B starts at zero and is what turns the A projection into a change of the output, so a faster B
    learns the same update in fewer steps. (peft's `create_loraplus_optimizer` does this for a
    single model and optimizer class; a run here trains up to three and may use 8-bit AdamW.)"""
    fast: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (fast if lora_plus_ratio != 1.0 and ".lora_B." in name else rest).append(p)
    return [{"params": rest, "lr": lr}] + ([{"params": fast, "lr": lr * lora_plus_ratio}] if fast else [])


def _unet_lora_targets(unet: Any, options: TrainingOptions) -> list[str]:
    """peft target_modules for the UNet: the suffixes as they are, or, with `lora_blocks`, the full
    names of the modules inside those blocks (or a block itself, e.g. "conv_out") that peft would
    match with the suffixes."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    suffixes = list(options.lora_target_modules)
    if not options.lora_blocks:
        return suffixes
    by_suffix = LoraConfig(target_modules=suffixes)
    blocks = tuple(block.rstrip(".") for block in options.lora_blocks)
    prefixes = tuple(block + "." for block in blocks)
    names = [
        name for name, _ in unet.named_modules()
        if (name in blocks or name.startswith(prefixes)) and check_target_module_exists(by_suffix, name)
    ]
    if not names:
        raise ValueError(f"no LoRA target modules in the UNet blocks {', '.join(options.lora_blocks)}")
    return names


def _token_rows(tokenizer: Any, token: str) -> list[int]:
    """The embedding rows (token ids) the rare token is spelt with, e.g. "sks" -> [48136]."""
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the token {token!r} tokenizes to nothing")
    return list(dict.fromkeys(ids))


def _trainable_token_rows(text_encoder: Any, rows: list[int], options: TrainingOptions, device: torch.device, weight_dtype: torch.dtype) -> dict[str, Any]:
    """Make the text encoder's input embedding trainable in `rows` only; return its param group.

    The rest of the matrix gets zero gradient (a hook) and no weight decay, so AdamW leaves it
    bit-identical; only the token's rows move.
    """
    _move(text_encoder, device, weight_dtype)
    weight = text_encoder.get_input_embeddings().weight
    weight.data = weight.data.float()
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, device=weight.device)
    keep[rows] = 1.0
    weight.register_hook(lambda grad: grad * keep)
    return {"params": [weight], "lr": options.token_learning_rate, "weight_decay": 0.0}

