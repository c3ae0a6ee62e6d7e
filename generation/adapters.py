"""A subject's trained weights, applied to the warm pipeline for one job and taken off afterwards.

Worker side (torch, diffusers, peft). The renderer holds one `LoadedAdapters` per loaded pipeline:
it keeps the last few LoRAs loaded (LRU) and switches between them per job, so a subject's weights
never reach another job.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from .errors import GenerationError

LORA_CACHE_SIZE = 4


@dataclass(frozen=True)
class Adapter:
    """A subject's trained weights to apply for one job."""

    kind: str  # "lora": a LoRA .safetensors file; "full": a folder holding a fine-tuned `unet/`
    path: str
    key: str  # stable name for the adapter cache (e.g. "run-12")
    token_embedding: str | None = None  # a pivotal-tuning run's token rows, swapped in for the job


class LoadedAdapters:
    """The adapters loaded into one pipeline; a reload of the pipeline starts a fresh one."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.loaded_loras: list[str] = []  # adapter keys, least recently used first

    @contextlib.contextmanager
    def applied(self, adapter: Adapter | None) -> Iterator[None]:
        """The subject put onto the pipeline for the block and taken off again whatever happens."""
        if adapter is None:
            yield
            return
        with self._token_rows(adapter), self._subject_weights(adapter):
            yield

    @contextlib.contextmanager
    def _token_rows(self, adapter: Adapter) -> Iterator[None]:
        """Write the subject's learnt token rows into the text encoder(s) for the call; the base rows
        go back afterwards (the next job sees the base exactly)."""
        swaps = self._subject_rows(adapter)
        if not swaps:
            yield
            return
        from .embeddings import swap_token_embedding

        restore = [(encoder, swap_token_embedding(encoder, rows)) for encoder, rows in swaps]
        try:
            yield
        finally:
            for encoder, base_rows in reversed(restore):
                swap_token_embedding(encoder, base_rows)

    def _subject_rows(self, adapter: Adapter) -> list[tuple[object, dict]]:
        """(text encoder, rows) pairs: the embedding bundled in a kohya LoRA file (CLIP-L's, and
        SDXL's CLIP-G's when it has one), else an older run's separate token file (text_encoder)."""
        swaps: list[tuple[object, dict]] = []
        if adapter.kind == "lora":
            lora = _lora_file(adapter.path)
            for encoder, (model, tokenizer) in enumerate((("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")), 1):
                if getattr(self.pipe, model, None) is None:
                    continue
                try:
                    rows = lora.token_rows(getattr(self.pipe, tokenizer), encoder=encoder)
                except ValueError as exc:
                    raise GenerationError(f"The subject's LoRA cannot be used with this model: {exc}") from exc
                if rows is not None:
                    swaps.append((getattr(self.pipe, model), rows))
        if not swaps and adapter.token_embedding:
            swaps.append((self.pipe.text_encoder, _token_embedding(adapter.token_embedding)))
        return swaps

    @contextlib.contextmanager
    def _subject_weights(self, adapter: Adapter) -> Iterator[None]:
        """The LoRA switched on (peft bypasses it again afterwards: exact base output), or a full
        fine-tune's UNet swapped in and the base one put back."""
        if adapter.kind == "lora":
            self._activate_lora(adapter)
            try:
                yield
            finally:
                self.pipe.disable_lora()
            return
        from diffusers import UNet2DConditionModel

        base_unet = self.pipe.unet
        tuned = UNet2DConditionModel.from_pretrained(Path(adapter.path) / "unet", dtype=base_unet.dtype).to(base_unet.device)
        self.pipe.register_modules(unet=tuned)
        try:
            yield
        finally:
            self.pipe.register_modules(unet=base_unet)
            del tuned

    def _activate_lora(self, adapter: Adapter) -> None:
        """Load the LoRA once and keep the last few loaded (LRU), switching between them per job."""
        loaded = self.loaded_loras
        if adapter.key in loaded:
            loaded.remove(adapter.key)
        else:
            if len(loaded) >= LORA_CACHE_SIZE:
                self.pipe.delete_adapters(loaded.pop(0))
            with warnings.catch_warnings():
                # peft warns whenever a model gets a second adapter; keeping a few is the point here.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                _lora_file(adapter.path).load_into(self.pipe, adapter.key)
        loaded.append(adapter.key)
        self.pipe.enable_lora()
        self.pipe.set_adapters([adapter.key])


@lru_cache(maxsize=LORA_CACHE_SIZE)
def _token_embedding(path: str) -> dict:
    """A run's token rows, read once per file (a run's files never change; each run has its own)."""
    from .embeddings import load_token_embedding

    return load_token_embedding(path)


@lru_cache(maxsize=LORA_CACHE_SIZE)
def _lora_file(path: str):
    """A subject's LoRA file read once (kohya layout with its bundled embedding, or an older run's
    peft layout): a run's files never change."""
    from .lora_files import read_lora_file

    return read_lora_file(path)
