"""Is an uploaded `.safetensors` a LoRA or a textual-inversion embedding imagesite can use? Told from
the file's header alone (its JSON table of tensor names, dtypes and shapes), torch-free, so the web
process checks an upload in the request without loading a single weight.

LoRA layouts read (what generation.lora_files / diffusers' `load_lora_weights` load in the worker):
- kohya (sd-scripts, A1111, ComfyUI, civitai): `lora_unet_…` / `lora_te_…` (SD 1/2) / `lora_te1_…`,
  `lora_te2_…` (SDXL) + `.lora_down.weight`, `.lora_up.weight`, `.alpha`; A1111's bundled embeddings
  `bundle_emb.<name>.…` ride along;
- diffusers/peft: `unet.…`, `text_encoder.…`, `text_encoder_2.…` + `.lora_A.weight`/`.lora_B.weight`
  (peft, what `save_lora_weights` writes) or `.lora.down.weight`/`.lora.up.weight` (older diffusers).
The family comes from, in order: SDXL-only keys (a second text encoder), the cross-attention width
(768 SD 1.x, 1024 SD 2.x, 2048 SDXL), the text encoder's width, kohya's `ss_base_model_version`,
and SDXL's deeper transformer blocks; "" when nothing tells (then it is tried with any base).

Embeddings as A1111 reads them from a safetensors file: one tensor (`emb_params`, any name) of
(vectors, width) — 768 wide for SD 1.x, 1024 for SD 2.x — or SDXL's `clip_l` + `clip_g` pair.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from .safetensors_header import HeaderError, read_safetensors_header
from .safetensors_header import SafetensorsHeader as Header

MAX_HEADER_BYTES = 16 * 1024 * 1024  # a LoRA's header is tens of KB; safetensors allows 100 MB
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
CROSS_ATTENTION_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_WIDTH_FAMILY = {768: "sd1", 1024: "sd2"}
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "": "an unknown family"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".alpha")
_OLD_DIFFUSERS_SUFFIXES = (".lora.down.weight", ".lora.up.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight", ".alpha")
_LYCORIS_PARTS = (".hada_w1_a", ".lokr_w1", ".lokr_w1_a", ".oft_blocks", ".diff", ".w_norm", ".b_norm")
_TRANSFORMER_HINTS = ("lora_transformer_", "transformer.", "diffusion_model.", "lora_unet_double_blocks_", "lora_unet_single_blocks_")
_BUNDLE_PREFIX = "bundle_emb."
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
# Header faults worded for an uploader; the others read "This is not a .safetensors file (<why>)."
_HEADER_FAULTS = {
    "short": "This is not a .safetensors file (too short for its header).",
    "truncated": "The file is incomplete (its tensors run past its end): download it again.",
}


class PromptFileError(ValueError):
    """What is wrong with an uploaded file, in words its uploader can act on."""


@dataclass(frozen=True)
class LoraFacts:
    layout: str  # "kohya" | "peft" | "diffusers"
    family: str  # "sd1" | "sd2" | "sdxl" | "" (unknown)
    modules: int  # adapted modules
    bundled: tuple[str, ...] = ()  # names of A1111 bundled embeddings


@dataclass(frozen=True)
class EmbeddingFacts:
    family: str
    vectors: int


def read_header(handle: BinaryIO, size: int) -> Header:
    """The safetensors header of an open upload of `size` bytes (`read_safetensors_header`, with a
    LoRA-sized limit), its faults worded for the uploader; a file without tensors is refused too."""
    try:
        header = read_safetensors_header(handle, size, max_header_bytes=MAX_HEADER_BYTES)
    except HeaderError as error:
        if error.problem == "entry":
            raise PromptFileError(f"The file is damaged (the header entry for “{error.key}” is malformed).") from None
        raise PromptFileError(_HEADER_FAULTS.get(error.problem, f"This is not a .safetensors file ({error}).")) from None
    if not header.shapes:
        raise PromptFileError("The file holds no tensors.")
    return header


def inspect_lora(header: Header) -> LoraFacts:
    """The layout and family of a LoRA file, or a PromptFileError saying why it cannot be used."""
    keys = [k for k in header.shapes if not k.startswith(_BUNDLE_PREFIX)]
    bundled = tuple(sorted({k.split(".")[1] for k in header.shapes if k.startswith(_BUNDLE_PREFIX) and k.count(".") >= 2}))
    if not keys:
        raise PromptFileError("The file holds no LoRA weights.")
    _refuse_other_kinds(header, keys)
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        layout, down, up = "kohya", ".lora_down.weight", ".lora_up.weight"
        allowed = _KOHYA_SUFFIXES
    elif all(k.startswith(_DIFFUSERS_PREFIXES) for k in keys):
        peft = any(k.endswith(".lora_A.weight") for k in keys)
        layout = "peft" if peft else "diffusers"
        allowed = _PEFT_SUFFIXES if peft else _OLD_DIFFUSERS_SUFFIXES
        down, up = (".lora_A.weight", ".lora_B.weight") if peft else (".down.weight", ".up.weight")
    else:
        odd = next(k for k in keys if not k.startswith(_KOHYA_PREFIXES + _DIFFUSERS_PREFIXES))
        raise PromptFileError(
            f"Not a LoRA in a layout imagesite reads (a key such as “{odd}”): upload a kohya file (lora_unet_…/"
            "lora_te_… keys, what AUTOMATIC1111 and civitai use) or a diffusers one (unet.…/text_encoder.… keys)."
        )
    strange = next((k for k in keys if not k.endswith(allowed)), None)
    if strange is not None:
        raise PromptFileError(f"“{strange}” is not part of a LoRA ({layout} layout): the file mixes in other weights.")
    if any(header.dtypes[k] not in FLOAT_DTYPES for k in keys):
        raise PromptFileError("The LoRA's weights are not floating-point numbers.")
    downs = {k[: -len(down)] for k in keys if k.endswith(down)}
    ups = {k[: -len(up)] for k in keys if k.endswith(up)}
    if not downs or downs != ups:
        raise PromptFileError("The file is damaged: its LoRA down and up weights do not come in pairs.")
    for module in downs:
        d, u = header.shapes[module + down], header.shapes[module + up]
        if len(d) < 2 or len(u) < 2 or d[0] != u[1]:
            raise PromptFileError(f"The file is damaged: the ranks of “{module}” do not match.")
    return LoraFacts(layout=layout, family=_lora_family(header, keys), modules=len(downs), bundled=bundled)


def _refuse_other_kinds(header: Header, keys: list[str]) -> None:
    if any(part in k for k in keys for part in _LYCORIS_PARTS):
        raise PromptFileError("This is a LyCORIS file (LoHa, LoKr, OFT …): imagesite applies LoRA and LoCon files only.")
    if any(k.startswith(_TRANSFORMER_HINTS) for k in keys):
        raise PromptFileError("This LoRA is for a transformer model (Flux, SD 3 …); imagesite runs SD 1.x, SD 2.x and SDXL.")
    if len(header.shapes) <= 2 and set(header.shapes) & {"emb_params", "clip_l", "clip_g"}:
        raise PromptFileError("This is a textual-inversion embedding, not a LoRA: upload it as an embedding.")


def _lora_family(header: Header, keys: list[str]) -> str:
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl"
    for key in keys:  # cross-attention key projections take the text width: the surest sign
        if re.search(r"attn2[._]to_k[._]", key) and re.search(r"(lora_down|lora_A|down)\.weight$", key):
            family = CROSS_ATTENTION_FAMILY.get(header.shapes[key][1])
            if family:
                return family
    for key in keys:
        if key.startswith(("lora_te_", "lora_te1_", "text_encoder.")) and re.search(r"q_proj[._](lora_down|lora_A|lora\.down)", key):
            family = TEXT_WIDTH_FAMILY.get(header.shapes[key][1])
            if family:
                return family
    version = header.metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith(("sd_v1", "sd_v2")) or header.metadata.get("ss_v2") in ("True", "False"):
        return "sd2" if version.startswith("sd_v2") or header.metadata.get("ss_v2") == "True" else "sd1"
    # SDXL's UNet stacks 2 or 10 transformer blocks where SD 1/2 have one.
    if any(re.search(r"transformer_blocks[._][1-9]", k) for k in keys):
        return "sdxl"
    return ""


def inspect_embedding(header: Header) -> EmbeddingFacts:
    """An A1111 textual-inversion safetensors file: one tensor of (vectors, width), or SDXL's
    `clip_l` (n, 768) + `clip_g` (n, 1280) pair. Anything else is a PromptFileError."""
    shapes = header.shapes
    if any(dtype not in FLOAT_DTYPES for dtype in header.dtypes.values()):
        raise PromptFileError("The embedding's vectors are not floating-point numbers.")
    if set(shapes) == {"clip_l", "clip_g"}:
        first, second = shapes["clip_l"], shapes["clip_g"]
        if len(first) != 2 or len(second) != 2 or first[0] != second[0] or first[0] < 1:
            raise PromptFileError("The SDXL embedding's clip_l and clip_g vectors do not match in number.")
        return EmbeddingFacts(family="sdxl", vectors=first[0])
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if len(shape) == 1:
            shape = (1, shape[0])
        if len(shape) == 2 and 1 <= shape[0] <= 75 and shape[1] >= 1:
            return EmbeddingFacts(family=TEXT_WIDTH_FAMILY.get(shape[1], ""), vectors=shape[0])
    if any(k.startswith(_KOHYA_PREFIXES + _DIFFUSERS_PREFIXES) for k in shapes):
        raise PromptFileError("This is a LoRA, not an embedding: upload it as a LoRA.")
    raise PromptFileError(
        "Not a textual-inversion embedding imagesite reads: expected one tensor of vectors (emb_params, as "
        "AUTOMATIC1111 writes) or SDXL's clip_l and clip_g pair."
    )


def fits(file_family: str, base_family: str) -> bool:
    """Whether a LoRA or embedding made for `file_family` fits a base of `base_family` (SD 2.x's 512
    and 768-v models share one architecture; an unknown family on either side is let through)."""
    def arch(family: str) -> str:
        return "sd2" if family in ("sd2", "sd2v") else family

    return not file_family or not base_family or arch(file_family) == arch(base_family)


def clean_name(name: str) -> str:
    """A file's stem as a prompt name: spaces to underscores, other characters a name cannot hold dropped."""
    name = re.sub(r"\s+", "_", name.strip())
    return re.sub(r"[^A-Za-z0-9_.\-]", "", name)[:100].lstrip(".-")
