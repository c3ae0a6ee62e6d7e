"""The files a run writes: the LoRA (or the UNet and text encoder folders) and the token's learnt
rows, all staged under a temporary name and moved into place at the end."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from generation.embeddings import save_token_embedding

from ..checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME


def token_embedding_state(text_encoder: Any, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """The rows to ship: {"token_ids": (n,) int64, "embeddings": (n, dim) float32} on the CPU."""
    weight = text_encoder.get_input_embeddings().weight
    ids = torch.tensor(list(rows), dtype=torch.int64)
    return {"token_ids": ids, "embeddings": weight.detach()[ids.to(weight.device)].to("cpu", torch.float32).contiguous()}


def _lora_state_dicts(unet: Any, text_encoder: Any | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The LoRA weights as `save_lora_weights` takes them and `load_lora_weights` reads them back
    whole, float32 on the CPU.

    The UNet's keys stay in peft's layout (`lora_A`/`lora_B`) for every module. diffusers'
    `convert_state_dict_to_diffusers` renames only the attention projections (`lora.down`), and
    `load_lora_weights` judges the layout of a UNet LoRA by its first key: a file that mixed both
    loaded only the modules in the first key's layout and silently dropped the rest (e.g. every
    attention LoRA when the first key was a convolution's). The text encoder keeps diffusers' layout,
    which its loader converts as a whole.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}

    text = cpu(convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))) if text_encoder is not None else None
    return cpu(get_peft_model_state_dict(unet)), text


def _save_checkpoint(
    output_dir: Path, *, method: str, unet: Any, text_encoder: Any, train_text_encoder: bool,
    token_state: dict[str, torch.Tensor] | None, token: str,
) -> tuple[Path, list[Path]]:
    """Write the result under a temporary folder in `output_dir`, then move it into place.

    Returns the checkpoint path and every file written (the token embedding file, when there is
    one, first).
    """
    from diffusers import StableDiffusionPipeline

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    extra: list[Path] = []
    try:
        if token_state is not None:
            save_token_embedding(token_state, staging / TOKEN_EMBEDDING_NAME, token)
            extra.append(output_dir / TOKEN_EMBEDDING_NAME)
            os.replace(staging / TOKEN_EMBEDDING_NAME, extra[0])
        if method == "lora":
            unet_layers, text_layers = _lora_state_dicts(unet, text_encoder if train_text_encoder else None)
            StableDiffusionPipeline.save_lora_weights(
                staging, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers,
                safe_serialization=True,
                unet_lora_adapter_metadata=_peft_metadata(unet),
                text_encoder_lora_adapter_metadata=_peft_metadata(text_encoder) if train_text_encoder else None,
            )
            target = output_dir / LORA_WEIGHT_NAME
            os.replace(staging / LORA_WEIGHT_NAME, target)
            return target, extra + [target]
        parts = [("unet", unet)] + ([("text_encoder", text_encoder)] if train_text_encoder else [])
        written: list[Path] = list(extra)
        for name, model in parts:
            model.to(torch.float32).save_pretrained(staging / name, safe_serialization=True)
            target = output_dir / name
            if target.exists():  # a rerun into the same folder: swap, then drop the old one
                old = output_dir / f".old-{name}-{uuid.uuid4().hex}"
                os.replace(target, old)
                os.replace(staging / name, target)
                shutil.rmtree(old)
            else:
                os.replace(staging / name, target)
            written += sorted(p for p in target.rglob("*") if p.is_file())
        return output_dir, written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _peft_metadata(model: Any) -> dict[str, Any] | None:
    """The adapter's LoraConfig as a JSON-able dict (rank, alpha, targets) stored in the file."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    return json.loads(json.dumps(config.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))

