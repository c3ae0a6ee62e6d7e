"""The files a run writes: the LoRA (kohya layout, the token's rows bundled) or the UNet and text
encoder folders, and the token's learnt rows, all staged under a temporary name and moved into
place at the end."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from generation.embeddings import save_token_embedding
from generation.lora_files import write_lora_file

from ..checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME


def token_embedding_state(text_encoder: Any, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """The rows to ship: {"token_ids": (n,) int64, "embeddings": (n, dim) float32} on the CPU."""
    weight = text_encoder.get_input_embeddings().weight
    ids = torch.tensor(list(rows), dtype=torch.int64)
    return {"token_ids": ids, "embeddings": weight.detach()[ids.to(weight.device)].to("cpu", torch.float32).contiguous()}


def _save_checkpoint(
    output_dir: Path, *, method: str, unet: Any, text_encoder: Any, train_text_encoder: bool,
    token_state: dict[str, torch.Tensor] | None, token: str, text_encoder_2: Any | None = None,
    is_xl: bool = False, v_parameterization: bool = False, class_noun: str | None = None,
) -> tuple[Path, list[Path]]:
    """Write the result under a temporary folder in `output_dir`, then move it into place.

    A LoRA run writes one kohya-layout file (LORA_WEIGHT_NAME: the file other tools load) with the
    token's rows bundled in it (generation.lora_files); the rows are also written alone as a
    textual-inversion file (TOKEN_EMBEDDING_NAME), which ComfyUI needs since it ignores bundled
    embeddings. `is_xl` picks SDXL's names; `text_encoder_2` is SDXL's second encoder (its LoRA, if
    it has one, and its token rows go into the file too). Returns the checkpoint path and every file
    written (the token embedding file, when there is one, first).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    extra: list[Path] = []
    if token_state is not None and is_xl and text_encoder_2 is not None and "embeddings_2" not in token_state:
        token_state = {**token_state, "embeddings_2": token_embedding_state(text_encoder_2, token_state["token_ids"].tolist())["embeddings"]}
    try:
        if token_state is not None:
            save_token_embedding(token_state, staging / TOKEN_EMBEDDING_NAME, token)
            extra.append(output_dir / TOKEN_EMBEDDING_NAME)
            os.replace(staging / TOKEN_EMBEDDING_NAME, extra[0])
        if method == "lora":
            write_lora_file(
                staging / LORA_WEIGHT_NAME, unet, {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2},
                is_xl=is_xl, token=token, token_state=token_state, class_noun=class_noun,
                v_parameterization=v_parameterization,
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

