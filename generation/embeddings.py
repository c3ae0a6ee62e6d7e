"""A subject's learnt token embedding (pivotal tuning): its file, and the swap into a text encoder.

Inference swaps the rows in per job (generation.pipeline) and training writes the file
(training.dreambooth.checkpoints); both take it from here, so generation never depends on training.
The file is a textual-inversion file (training.checkpoint_names.TOKEN_EMBEDDING_NAME in a run's
folder); the same rows are bundled into the run's LoRA file (generation.lora_files). The rows
travel as {"token_ids": (n,) int64, "embeddings": (n, dim) float32} on the CPU; SDXL adds
"embeddings_2" (n, dim_2), the second text encoder's rows (`swap_token_embedding` reads only
"embeddings": pass {"token_ids", "embeddings": rows["embeddings_2"]} for the second encoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_token_embedding(state: dict[str, torch.Tensor], path: Path, token: str) -> None:
    """Write the rows as a textual-inversion file: one tensor, `emb_params` (n, dim), which
    diffusers' `load_textual_inversion(path, token="<sks>")`, A1111 and ComfyUI read; or, for SDXL
    (`state` has "embeddings_2", the second encoder's rows), `clip_l` and `clip_g` as A1111 and
    ComfyUI read SDXL embeddings. The token and the rows it replaces go in the metadata for
    `load_token_embedding`."""
    from safetensors.torch import save_file

    ids = ",".join(str(int(i)) for i in state["token_ids"])
    tensors = (
        {"clip_l": state["embeddings"], "clip_g": state["embeddings_2"]} if "embeddings_2" in state
        else {"emb_params": state["embeddings"]}
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"token": token, "token_ids": ids})


def load_token_embedding(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by `save_token_embedding` back into the rows format (see the module;
    an SDXL file adds "embeddings_2", the second encoder's rows)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ids = (f.metadata() or {}).get("token_ids", "")
        keys = sorted(f.keys())
        if keys not in (["emb_params"], ["clip_g", "clip_l"]) or not ids:
            raise ValueError(f"{Path(path).name} is not a token embedding written by a training run")
        tensors = {k: f.get_tensor(k) for k in keys}
    token_ids = torch.tensor([int(i) for i in ids.split(",")], dtype=torch.int64)
    rows = {"embeddings": tensors.get("emb_params", tensors.get("clip_l"))}
    if "clip_g" in tensors:
        rows["embeddings_2"] = tensors["clip_g"]
    if any(r.ndim != 2 or r.shape[0] != len(token_ids) for r in rows.values()):
        raise ValueError(f"{Path(path).name} does not hold one embedding per token piece")
    return {"token_ids": token_ids, **{k: v.float() for k, v in rows.items()}}


@torch.no_grad()
def swap_token_embedding(text_encoder: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write `state`'s rows into the text encoder's input embedding; return the rows it replaced
    (same format), so `swap_token_embedding(te, previous)` restores the base exactly."""
    weight = text_encoder.get_input_embeddings().weight
    ids = state["token_ids"].to(weight.device)
    if state["embeddings"].shape[1] != weight.shape[1] or int(ids.max()) >= weight.shape[0]:
        raise ValueError("the token embedding does not fit this model's text encoder")
    previous = {"token_ids": state["token_ids"].clone(), "embeddings": weight[ids].to("cpu").clone()}
    weight[ids] = state["embeddings"].to(weight.device, weight.dtype)
    return previous

