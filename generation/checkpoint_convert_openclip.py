"""The pieces of the single-file export that SD 2.x and SDXL add: OpenCLIP's key layout, and which family
a model is. Used by `checkpoint_convert`; no Django here.

SD 2.x's text encoder and SDXL's second one are OpenCLIP models (ViT-H, ViT-bigG). Diffusers holds them
as transformers `CLIPTextModel`/`CLIPTextModelWithProjection`; the original checkpoints keep OpenCLIP's
own names, with the attention's q, k and v projections fused into one `in_proj` matrix. The mapping here
is the inverse of `diffusers.loaders.single_file_utils.convert_open_clip_checkpoint`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

FAMILIES = ("sd1", "sd2", "sdxl")

# transformers name → OpenCLIP name, for keys outside the encoder layers.
_OPEN_CLIP_TOP = {
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
# Inside `encoder.layers.N.`: transformers → OpenCLIP `transformer.resblocks.N.`.
_OPEN_CLIP_LAYER = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)
_QKV = ("q_proj", "k_proj", "v_proj")


def convert_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's state dict (with or without the `text_model.` prefix;
    `text_projection.weight` when it has one) → OpenCLIP keys, without the `cond_stage_model.model.` /
    `conditioner.embedders.1.model.` prefix.

    q/k/v weights `[hidden, hidden]` and biases `[hidden]` are concatenated in that order into
    `attn.in_proj_weight` `[3·hidden, hidden]` / `attn.in_proj_bias`; the projection is stored
    transposed (`text_projection` is `[hidden, projection_dim]`, applied as `x @ text_projection`)."""
    plain = {key.removeprefix("text_model."): tensor for key, tensor in state.items() if not key.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in plain.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key.startswith("encoder.layers."):
            index, rest = key[len("encoder.layers."):].split(".", 1)
            head = f"transformer.resblocks.{index}."
            projection = rest.split(".")[1] if rest.startswith("self_attn.") else ""
            if projection in _QKV:
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                fused.setdefault(f"{head}attn.in_proj_{kind}", {})[projection] = tensor
                continue
            for old, new in _OPEN_CLIP_LAYER:
                if rest.startswith(old):
                    out[head + new + rest[len(old):]] = tensor
                    break
            else:
                raise ValueError(f"Text encoder key {key!r} has no place in the OpenCLIP layout.")
        else:
            raise ValueError(f"Text encoder key {key!r} has no place in the OpenCLIP layout.")
    for key, parts in fused.items():
        if set(parts) != set(_QKV):
            raise ValueError(f"{key}: the text encoder lacks one of q, k and v ({', '.join(sorted(parts))} found).")
        out[key] = torch.cat([parts[name] for name in _QKV], dim=0)
    return out


def family_of_components(parts: Mapping[str, Any]) -> str:
    """"sdxl" with a second text encoder; otherwise "sd2" for an OpenCLIP text encoder (its activation
    is `gelu`) and "sd1" for OpenAI CLIP (`quick_gelu`). `parts` maps component names to modules."""
    if parts.get("text_encoder_2") is not None:
        return "sdxl"
    act = getattr(parts["text_encoder"].config, "hidden_act", "quick_gelu")
    return "sd1" if act == "quick_gelu" else "sd2"


def folder_family(folder: str | os.PathLike) -> str:
    """The family of a diffusers folder from its JSON alone (no torch, no weights read):
    `model_index.json` names a `text_encoder_2` for SDXL; the text encoder's `hidden_act` tells SD 2.x
    (OpenCLIP, `gelu`) from SD 1.x (`quick_gelu`). Raises ValueError for anything else."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder} is not a diffusers model folder ({exc}).") from exc
    name = index.get("_class_name", "")
    if name.startswith("StableDiffusionXL") or index.get("text_encoder_2"):
        return "sdxl"
    if not name.startswith("StableDiffusion") or name.startswith("StableDiffusion3"):
        raise ValueError(f"{folder} holds a {name or 'pipeline of unknown class'}; only SD 1.x, 2.x and SDXL can be exported.")
    try:
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: cannot read text_encoder/config.json ({exc}).") from exc
    return "sd1" if text.get("hidden_act", "quick_gelu") == "quick_gelu" else "sd2"
