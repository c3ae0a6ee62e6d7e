"""What the UNet is told besides the noisy latents, per base family.

SD 1.x / 2.x: the last hidden state of the one CLIP text encoder (SD 2.x's config already stops
one layer early). SDXL, as diffusers' StableDiffusionXLPipeline and its DreamBooth-LoRA example
encode it: the penultimate hidden states of both encoders side by side, the second encoder's pooled
projection as `text_embeds`, and six "micro-conditioning" numbers per image as `time_ids`:
original size (h, w), crop top-left (top, left), target size (h, w).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts: `states` (N, L, D); `pooled` (N, P) on SDXL, else None."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __getitem__(self, idx: Any) -> Conditioning:
        return Conditioning(self.states[idx], None if self.pooled is None else self.pooled[idx])

    def cat(self, other: Conditioning) -> Conditioning:
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([self.states, other.states]), pooled)


class TextConditioning:
    """The text side of one loaded pipeline: its tokenizer(s) and text encoder(s), and how the UNet
    takes what they make. `is_xl` when the pipeline has a second encoder (SDXL)."""

    def __init__(self, pipe: Any) -> None:
        second = getattr(pipe, "text_encoder_2", None)
        self.is_xl = second is not None
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.is_xl else [])
        self.text_encoders = [pipe.text_encoder] + ([second] if self.is_xl else [])
        lengths = {t.model_max_length for t in self.tokenizers}
        if len(lengths) != 1:
            raise ValueError(f"the tokenizers disagree on the prompt length: {sorted(lengths)}")

    def tokenize(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        """Prompt strings -> token ids (N, encoders, model_max_length) int64 on `device`: one row
        per encoder, each from its own tokenizer (SDXL's second pads with "!")."""
        rows = [
            t(list(prompts), padding="max_length", max_length=t.model_max_length, truncation=True, return_tensors="pt").input_ids
            for t in self.tokenizers
        ]
        return torch.stack(rows, dim=1).to(device)

    def encode(self, ids: torch.Tensor) -> Conditioning:
        """Token ids (N, encoders, L) -> Conditioning, with gradients if the encoders have them."""
        if not self.is_xl:
            return Conditioning(self.text_encoders[0](ids[:, 0])[0])
        states, pooled = [], None
        for i, encoder in enumerate(self.text_encoders):
            out = encoder(ids[:, i], output_hidden_states=True)
            states.append(out.hidden_states[-2])
            if i == len(self.text_encoders) - 1:
                pooled = out.text_embeds  # CLIPTextModelWithProjection's pooled projection
        return Conditioning(torch.cat(states, dim=-1), pooled)

    def unet_kwargs(self, cond: Conditioning, time_ids: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
        """Keyword arguments of the UNet's forward for a batch (time_ids (N, 6), SDXL only)."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.states.to(dtype)}
        if self.is_xl:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids.to(dtype)}
        return kwargs


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], resolution: int) -> torch.Tensor:
    """SDXL's six size numbers for one training image, float32 (6,): its size before resizing
    (h, w), where the crop started in the resized image (top, left), and the size trained (res, res)."""
    return torch.tensor([*original_hw, *crop_top_left, resolution, resolution], dtype=torch.float32)
