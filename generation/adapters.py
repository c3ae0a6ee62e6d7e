"""Trained weights put onto the warm pipeline for one job and taken off afterwards: a subject's
LoRA or full fine-tune, the LoRAs a prompt names (`<lora:name:w>`, several at once with their
weights) and its textual-inversion embeddings.

Worker side (torch, diffusers, peft). The renderer holds one `LoadedAdapters` per loaded pipeline:
it keeps the last few LoRAs loaded (LRU) and switches between them per job (peft `set_adapters`
with each one's weights, `disable_lora` afterwards), and adds a job's embeddings as new tokens that
are removed again after it, so nothing of one job reaches the next. The UNet's LoRA layers are merged
into its weights for the job (on the demo model a fused job measured 1.02x a bare one, peft's unmerged
layers 1.15x) and the touched weights written back from an exact copy afterwards: the next job
without adapters sees the base bit for bit (tests/test_subject_fuse.py, bench/subject_cost.py).
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import GenerationError

LORA_CACHE_SIZE = 4
KEEP_ON_GPU_MARGIN = 2 * 1024**3  # free GPU memory a fused job's weight copies must leave (else kept on the CPU)


@dataclass(frozen=True)
class Adapter:
    """A subject's trained weights to apply for one job."""

    kind: str  # "lora": a LoRA .safetensors file; "full": a folder holding a fine-tuned `unet/`;
    #            "embedding": a textual-inversion .safetensors file, used where the prompt says `name`
    path: str
    key: str  # stable name for the adapter cache (e.g. "run-12", "lora-3-<sha>")
    token_embedding: str | None = None  # a pivotal-tuning run's token rows, swapped in for the job
    name: str = ""  # as the prompt writes it (`<lora:name:w>`, an embedding's word)
    weight: float = 1.0  # the text encoders' multiplier (A1111's te weight); a LoRA's only one unless:
    unet_weight: float | None = None  # the UNet's, when it differs (`<lora:name:te:unet>`)
    sha256: str = ""  # of the file, when known (the PNG's Lora hashes)

    @property
    def unet_scale(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight

    @property
    def is_off(self) -> bool:
        """A LoRA at weight 0 everywhere changes nothing: not applied at all (the base exactly)."""
        return self.kind == "lora" and self.weight == 0 and self.unet_scale == 0


Adapters = Adapter | Sequence[Adapter] | None
PromptRewrite = Callable[[str], str]


class LoadedAdapters:
    """The adapters loaded into one pipeline; a reload of the pipeline starts a fresh one."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.loaded_loras: list[str] = []  # adapter keys, least recently used first
        self.fuse = True  # merge the UNet's LoRAs into its weights for a job (False: peft's layers on every step)

    @contextlib.contextmanager
    def applied(self, adapters: Adapters) -> Iterator[PromptRewrite]:
        """The job's adapters put onto the pipeline for the block and taken off again whatever
        happens. Yields the job's prompt rewrite: each embedding's word (any case) becomes the token
        added for it (identity when the job has no embeddings)."""
        chosen = [a for a in _as_list(adapters) if not a.is_off]
        loras = [a for a in chosen if a.kind == "lora"]
        full = [a for a in chosen if a.kind == "full"]
        if full and (loras or len(full) > 1):
            raise GenerationError("A fully fine-tuned subject cannot be combined with LoRAs or another subject: use one at a time.")
        with contextlib.ExitStack() as stack:
            for adapter in chosen:
                if adapter.kind in ("lora", "full") and _is_subject(adapter):
                    stack.enter_context(self._token_rows(adapter))
            rewrite = stack.enter_context(self._embeddings(_embedding_vectors(chosen)))
            if full:
                stack.enter_context(self._full_unet(full[0]))
            if loras:
                stack.enter_context(self._loras(loras))
            yield rewrite

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
    def _full_unet(self, adapter: Adapter) -> Iterator[None]:
        """A full fine-tune's UNet swapped in and the base one put back."""
        from diffusers import UNet2DConditionModel

        base_unet = self.pipe.unet
        tuned = UNet2DConditionModel.from_pretrained(Path(adapter.path) / "unet", dtype=base_unet.dtype).to(base_unet.device)
        self.pipe.register_modules(unet=tuned)
        try:
            yield
        finally:
            self.pipe.register_modules(unet=base_unet)
            del tuned

    @contextlib.contextmanager
    def _loras(self, loras: list[Adapter]) -> Iterator[None]:
        """The job's LoRAs switched on together, each at its weights (peft bypasses them again
        afterwards: exact base output for the next job)."""
        names = [adapter.key for adapter in loras]
        if len(set(names)) != len(names):
            raise GenerationError("The same LoRA is named twice for one job.")
        for adapter in loras:
            self._load_lora(adapter, keep=names)
        self.pipe.enable_lora()
        try:
            self.pipe.set_adapters(names, adapter_weights=[self._weights(adapter) for adapter in loras])
            with self._fused(names):
                yield
        finally:
            self.pipe.disable_lora()

    @contextlib.contextmanager
    def _fused(self, names: list[str]) -> Iterator[None]:
        """The UNet's LoRA layers merged into its base weights for the job (the peft layers bypassed,
        so each step costs a bare step), each touched base weight kept as an exact copy and
        written back afterwards whatever happens (not unmerged: subtracting again leaves rounding
        behind, and the next job must see the base bit for bit). The text encoders keep peft's
        path (they run once per job). Falls back to peft's path where a merge cannot be exact or
        is not plain (DoRA and other variants, a LoRA bias, weights offloaded to the meta device).
        The copies are transient: the touched weights only (SD 1.5, a LoRA on the attention
        projections: 93.5 M parameters, 187 MB fp16 / 374 MB fp32; SDXL's: 1.9 GB fp16), beside
        the weights, or in CPU memory when the GPU lacks room."""
        merges = _unet_merges(getattr(self.pipe, "unet", None), names) if self.fuse else None
        if not merges:
            yield
            return
        import torch

        kept: list[tuple[object, object]] = []
        try:
            with torch.no_grad():
                for layer, adapters in merges:
                    weight = layer.get_base_layer().weight
                    kept.append((weight, weight.detach().to(_keep_device(weight), copy=True)))
                    for name in adapters:
                        weight.add_(layer.get_delta_weight(name).to(weight.dtype))
            self.pipe.unet.disable_lora()
            yield
        finally:
            with torch.no_grad():
                for weight, copy in reversed(kept):
                    weight.copy_(copy)

    def _weights(self, adapter: Adapter) -> float | dict[str, float]:
        """One number, or per part when the UNet's weight differs from the text encoders' (only the
        pipeline's parts: diffusers refuses names it does not have)."""
        if adapter.unet_scale == adapter.weight:
            return adapter.weight
        parts = [p for p in ("unet", "text_encoder", "text_encoder_2") if getattr(self.pipe, p, None) is not None]
        return {p: adapter.unet_scale if p == "unet" else adapter.weight for p in parts}

    def _load_lora(self, adapter: Adapter, keep: list[str]) -> None:
        """Load the LoRA once and keep the last few loaded (LRU; never evicting this job's own)."""
        loaded = self.loaded_loras
        if adapter.key in loaded:
            loaded.remove(adapter.key)
        else:
            while len(loaded) >= max(LORA_CACHE_SIZE, len(keep)) and any(k not in keep for k in loaded):
                self.pipe.delete_adapters(next(k for k in loaded if k not in keep))
                loaded.remove(next(k for k in loaded if k not in keep))
            with warnings.catch_warnings():
                # peft warns whenever a model gets a second adapter; keeping a few is the point here.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                try:
                    _lora_file(adapter.path).load_into(self.pipe, adapter.key)  # its weights are read here only, for peft to keep
                except (ValueError, KeyError, RuntimeError) as exc:
                    _discard_partial(self.pipe, adapter.key)
                    raise GenerationError(f"The LoRA “{adapter.name or adapter.key}” does not fit this model: {_first_line(exc)}") from exc
        loaded.append(adapter.key)

    @contextlib.contextmanager
    def _embeddings(self, items: list[tuple[str, dict]]) -> Iterator[PromptRewrite]:
        """Textual-inversion vectors added as new tokens (`load_textual_inversion`, into both SDXL
        encoders) for the block and removed again (`unload_textual_inversion`). Each embedding gets a
        token no prompt can write (`<imagesite-ti-N>`); the rewrite yielded turns its name into it."""
        if not items:
            yield _same
            return
        encoders = [(t, e, w) for t, e, w in ((getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "text_encoder", None), "l"),
                                             (getattr(self.pipe, "tokenizer_2", None), getattr(self.pipe, "text_encoder_2", None), "g"))
                    if e is not None]
        added: list[tuple[object, object, list[str]]] = []
        tokens: dict[str, str] = {}
        try:
            for index, (name, vectors) in enumerate(items):
                token = f"<imagesite-ti-{index}>"
                for tokenizer, encoder, which in encoders:
                    rows = _rows_for(name, vectors, which, sdxl=len(encoders) == 2 or which == "g")
                    width = encoder.get_input_embeddings().weight.shape[1]
                    if rows.shape[1] != width:
                        raise GenerationError(f"The embedding “{name}” has {rows.shape[1]}-wide vectors; this model's text encoder takes {width}.")
                    self.pipe.load_textual_inversion(rows, token=token, tokenizer=tokenizer, text_encoder=encoder)
                    added.append((tokenizer, encoder, [token] + [f"{token}_{i}" for i in range(1, rows.shape[0])]))
                tokens[name] = token
            yield _rewriter(tokens)
        finally:
            for tokenizer, encoder, names in reversed(added):
                self.pipe.unload_textual_inversion(tokens=names, tokenizer=tokenizer, text_encoder=encoder)


def _unet_merges(unet, names: list[str]) -> list[tuple[object, list[str]]] | None:
    """(peft LoRA layer, the job's adapters with a non-zero scale in it) for every layer of the UNet
    the job's LoRAs touch; None when one of them cannot be merged plainly (peft's path then)."""
    if unet is None:
        return None
    from peft.tuners.lora import LoraLayer

    merges = []
    for module in unet.modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = [n for n in names if n in module.lora_A and module.scaling.get(n, 0) != 0]
        if not adapters:
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if (weight is None or weight.device.type == "meta" or any(n in getattr(module, "lora_variant", {}) for n in adapters)
                or any(module.lora_bias.get(n) for n in adapters)):
            return None
        merges.append((module, adapters))
    return merges


def _keep_device(weight) -> str:
    """Where a touched weight's exact copy waits: beside it, unless that is a GPU short of room
    (then the CPU's memory; the copy back costs a transfer)."""
    import torch

    if weight.device.type != "cuda":
        return weight.device
    free, _ = torch.cuda.mem_get_info(weight.device)
    return weight.device if free > weight.numel() * weight.element_size() + KEEP_ON_GPU_MARGIN else "cpu"


def _as_list(adapters: Adapters) -> list[Adapter]:
    if adapters is None:
        return []
    return [adapters] if isinstance(adapters, Adapter) else list(adapters)


def _is_subject(adapter: Adapter) -> bool:
    """A training run's checkpoint (its bundled rows replace the token's own); uploaded LoRAs'
    bundled embeddings are added as new tokens instead (`_embedding_vectors`)."""
    return adapter.key.startswith("run-") or adapter.kind == "full"


def _embedding_vectors(adapters: list[Adapter]) -> list[tuple[str, dict]]:
    """(name, {vector name: (n, dim) tensor}) for the job's embeddings and the embeddings bundled in
    its uploaded LoRA files (A1111's bundle_emb, used by their names as A1111 does)."""
    items: list[tuple[str, dict]] = []
    for adapter in adapters:
        if adapter.kind == "embedding":
            items.append((adapter.name, _embedding_file(adapter.path)))
        elif adapter.kind == "lora" and not _is_subject(adapter):
            items.extend(_lora_file(adapter.path).bundled.items())
    return items


def _rows_for(name: str, vectors: dict, which: str, sdxl: bool):
    """The (n, dim) rows of an embedding for CLIP-L ("l") or SDXL's CLIP-G ("g")."""
    if sdxl:
        rows = vectors.get("clip_l" if which == "l" else "clip_g")
        if rows is None:
            raise GenerationError(f"The embedding “{name}” is not an SDXL embedding (it has no clip_l and clip_g vectors).")
    else:
        if "clip_g" in vectors:
            raise GenerationError(f"The embedding “{name}” is an SDXL embedding; this model is not SDXL.")
        rows = vectors.get("clip_l", next((v for k, v in vectors.items() if k != "clip_g"), None))
    rows = rows.float()
    return rows.unsqueeze(0) if rows.ndim == 1 else rows


def _rewriter(tokens: dict[str, str]) -> PromptRewrite:
    pattern = re.compile(r"(?<![\w.\-])(" + "|".join(re.escape(n) for n in sorted(tokens, key=len, reverse=True)) + r")(?![\w\-]|\.\w)", re.IGNORECASE)
    lowered = {name.lower(): token for name, token in tokens.items()}
    return lambda text: pattern.sub(lambda m: lowered[m.group(1).lower()], text)


def _same(text: str) -> str:
    return text


def _discard_partial(pipe, key: str) -> None:
    """Drop what a failed load left behind, so the next job starts clean."""
    with contextlib.suppress(Exception):
        pipe.delete_adapters(key)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@lru_cache(maxsize=LORA_CACHE_SIZE)
def _token_embedding(path: str) -> dict:
    """A run's token rows, read once per file (a run's files never change; each run has its own)."""
    from .embeddings import load_token_embedding

    return load_token_embedding(path)


@lru_cache(maxsize=16)
def _lora_file(path: str):
    """A LoRA file's bundled embeddings and metadata, read once (a run's files and uploads never
    change); not its weights, which peft holds once loaded (an SDXL LoRA's reach a GB)."""
    from .lora_files import read_lora_file

    return read_lora_file(path, weights=False)


@lru_cache(maxsize=16)
def _embedding_file(path: str) -> dict:
    """An uploaded embedding's tensors ({"emb_params": (n, dim)} or {"clip_l", "clip_g"}), read once;
    uploads are never rewritten (a new upload is a new file)."""
    from safetensors.torch import load_file

    return load_file(path)
