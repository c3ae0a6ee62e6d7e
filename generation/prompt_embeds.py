"""Weighted, unlimited-length prompt embeddings the way AUTOMATIC1111 builds them (worker side).

A prompt is parsed by generation.prompt_syntax into (text, weight) pieces, tokenized without special
tokens and cut into chunks of 75 tokens (a BREAK cuts early). Each chunk is encoded on its own as
`<bos> tokens <eos> <pad>…` (77 positions, exactly what diffusers feeds the encoder for a short
prompt), its hidden states are multiplied by the tokens' weights and rescaled to their original
mean (A1111's "Original" emphasis), and the chunks are concatenated along the sequence axis: a
prompt of 200 tokens gives 3 chunks, 231 positions. The negative prompt is padded with empty chunks
to the same count so classifier-free guidance can stack the two.

SD 1.x/2.x take the encoder's last hidden state (diffusers' default, no clip skip); SDXL takes the
penultimate hidden states of both encoders side by side, and the pooled embedding from the second
encoder's projection of the FIRST chunk (as A1111 and ComfyUI do). A short unweighted prompt gives
exactly the tensors diffusers' own `pipe.encode_prompt` gives, so earlier images stay reproducible.

Not done (A1111 options off by default or specific to it): comma padding backtrack (moving the words
after the last comma into the next chunk), clip skip, prompt editing. LoRA tags are removed from the
text here; applying them is the caller's business (`prompt_syntax.extract_lora_tags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .prompt_syntax import extract_lora_tags, is_break, parse_prompt_attention


# A mean below this fraction of the mean magnitude counts as zero (see apply_weights).
MEAN_EPSILON = 1e-4


@dataclass
class Chunk:
    """One encoder input: `ids` and `weights` both `tokenizer.model_max_length` long (77)."""

    ids: list[int]
    weights: list[float]


def _tokenizer_pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def _close_chunk(tokenizer: Any, ids: list[int], weights: list[float]) -> Chunk:
    """`<bos> ids <eos> <pad>…` as diffusers' `padding="max_length"` lays it out (SD 2.x and SDXL's
    second tokenizer pad with "!", SD 1.x with <eos>)."""
    length = tokenizer.model_max_length
    fill = length - 2 - len(ids)
    return Chunk(
        ids=[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [_tokenizer_pad_id(tokenizer)] * fill,
        weights=[1.0, *weights, 1.0] + [1.0] * fill,
    )


def prompt_chunks(tokenizer: Any, prompt: str, convert: Any = None) -> list[Chunk]:
    """Tokenize `prompt` (A1111 syntax, LoRA tags already removed) into chunks of at most
    `model_max_length - 2` (75) tokens. `convert(text, tokenizer)` rewrites each piece first
    (diffusers' `maybe_convert_prompt` for multi-vector textual inversion tokens)."""
    pieces = parse_prompt_attention(prompt)
    texts = [text if convert is None else convert(text, tokenizer) for text, _ in pieces]
    tokenized = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    body = tokenizer.model_max_length - 2
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    for piece, tokens in zip(pieces, tokenized):
        if is_break(piece):
            chunks.append(_close_chunk(tokenizer, ids, weights))
            ids, weights = [], []
            continue
        for token in tokens:
            if len(ids) == body:
                chunks.append(_close_chunk(tokenizer, ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(piece[1])
    if ids or not chunks:
        chunks.append(_close_chunk(tokenizer, ids, weights))
    return chunks


def _encode_chunk(encoder: Any, chunk: Chunk, penultimate: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77, dim) hidden states of one chunk, weighted; plus the pooled (1, proj) output when the
    encoder has a projection (SDXL's second), else None."""
    ids = torch.tensor([chunk.ids], dtype=torch.long, device=device)
    if penultimate:
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2]
    else:
        out = encoder(ids)  # the call diffusers makes, so the numbers match to the bit
        hidden = out[0]
    pooled = out[0] if out[0].ndim == 2 else None
    if any(w != 1.0 for w in chunk.weights):
        multipliers = torch.tensor(chunk.weights, dtype=hidden.dtype, device=hidden.device).reshape(1, -1, 1)
        hidden = apply_weights(hidden, multipliers)
    return hidden, pooled


def apply_weights(hidden: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Multiply (1, 77, dim) hidden states by (1, 77, 1) token weights, then restore the original
    mean (A1111's "Original" emphasis: weights change the balance between tokens, not the overall
    scale). A1111 divides by the new mean whatever it is; where the mean is about zero (an encoder
    whose final layer norm has no bias, as in random test models) that gives inf or a sign flip, so
    there the weights are applied without the correction."""
    original_mean = hidden.mean()
    weighted = hidden * multipliers
    factor = original_mean / weighted.mean()
    meaningful = original_mean.abs() > MEAN_EPSILON * hidden.abs().mean()
    if meaningful and torch.isfinite(factor) and factor > 0:
        weighted = weighted * factor
    return weighted


def _encoders(pipe: Any) -> tuple[list[tuple[Any, Any]], bool]:
    """[(tokenizer, text_encoder)] in diffusers' order, and whether this is the SDXL layout."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs = [(pipe.tokenizer_2, pipe.text_encoder_2)]
        if getattr(pipe, "text_encoder", None) is not None:
            pairs.insert(0, (pipe.tokenizer, pipe.text_encoder))
        return pairs, True
    return [(pipe.tokenizer, pipe.text_encoder)], False


def _empty_chunk(tokenizer: Any) -> Chunk:
    return _close_chunk(tokenizer, [], [])


@torch.no_grad()
def _encode_text(pairs: list[tuple[Any, Any]], sdxl: bool, chunk_lists: list[list[Chunk]], count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77 * count, dim) embeddings and the pooled (1, proj) of the first chunk (SDXL) or None."""
    per_chunk: list[list[torch.Tensor]] = [[] for _ in range(count)]
    pooled = None
    for (tokenizer, encoder), chunks in zip(pairs, chunk_lists):
        chunks = chunks + [_empty_chunk(tokenizer)] * (count - len(chunks))
        for i, chunk in enumerate(chunks):
            hidden, chunk_pooled = _encode_chunk(encoder, chunk, penultimate=sdxl, device=device)
            per_chunk[i].append(hidden)
            if i == 0 and chunk_pooled is not None:
                pooled = chunk_pooled
    embeds = torch.cat([torch.cat(parts, dim=-1) for parts in per_chunk], dim=1)
    return embeds, pooled


def encode_prompt(pipe: Any, prompt: str, negative_prompt: str | None, num_images_per_prompt: int = 1) -> dict[str, torch.Tensor]:
    """Keyword arguments for a StableDiffusionPipeline / StableDiffusionXLPipeline call in place of
    `prompt=` and `negative_prompt=`: `prompt_embeds` and `negative_prompt_embeds`, each
    (num_images_per_prompt, 77 * chunks, dim), and for SDXL `pooled_prompt_embeds` and
    `negative_pooled_prompt_embeds` (num_images_per_prompt, proj). On the pipeline's execution
    device in its text encoder's dtype. Keep `num_images_per_prompt` at 1 when the pipeline call
    itself gets `num_images_per_prompt` (the pipeline repeats the embeddings itself).

    An empty or None negative prompt on a pipeline with `force_zeros_for_empty_prompt` (SDXL) gives
    zeros, as diffusers does for None; elsewhere it is the encoded empty prompt. LoRA tags in either
    prompt are removed (not applied)."""
    pairs, sdxl = _encoders(pipe)
    device = getattr(pipe, "_execution_device", None) or pipe.device
    convert = getattr(pipe, "maybe_convert_prompt", None)
    positive_text, _ = extract_lora_tags(prompt)
    negative_text, _ = extract_lora_tags(negative_prompt or "")
    positive = [prompt_chunks(tok, positive_text, convert) for tok, _ in pairs]
    negative = [prompt_chunks(tok, negative_text, convert) for tok, _ in pairs]
    count = max(len(c) for c in positive + negative)

    embeds, pooled = _encode_text(pairs, sdxl, positive, count, device)
    zero_negative = not negative_prompt and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    if zero_negative:
        negative_embeds = torch.zeros_like(embeds)
        negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
    else:
        negative_embeds, negative_pooled = _encode_text(pairs, sdxl, negative, count, device)

    dtype = pairs[-1][1].dtype  # diffusers casts to the (last) text encoder's dtype
    result = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if sdxl:
        result |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    return {
        key: value.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        for key, value in result.items()
    }
