"""The Generate form's settings read back from a PNG that AUTOMATIC1111, ComfyUI, InvokeAI or imagesite wrote.

Torch-free, and cheap enough for a web request: the file is opened lazily and only the text chunks
Pillow reads before the pixel data (`Image.info`) are looked at; pixels are never decoded. sd-parsers
(with `Eagerness.FAST`, the extractor that reads `Image.info` only) understands the formats; this module
maps what it finds to our field names and says in `notes` what could not be carried over.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import PurePath
from typing import IO, Any

from PIL import Image, UnidentifiedImageError
from sd_parsers import Eagerness, ParserManager
from sd_parsers.data import PromptInfo

from .modelinfo import SCHEDULERS
from .models import usable_subjects
from .prompt_syntax import extract_lora_tags

MAX_PNG_BYTES = 32 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Sampler names as the other tools write them (lower case) -> our scheduler keys. Our own labels
# ("DPM++ 2M", "Euler a", ...) are A1111's names, so they are added from SCHEDULERS below.
_SAMPLER_ALIASES = {
    "dpmpp_2m": "dpmpp_2m", "dpmpp_2m_k": "dpmpp_2m", "dpm++ 2m karras": "dpmpp_2m",
    "euler_ancestral": "euler_a", "euler_a": "euler_a", "euler a": "euler_a",
    "euler": "euler", "euler_k": "euler",
    "ddim": "ddim", "plms": "pndm", "pndm": "pndm",
}
_SAMPLERS = {**{choice.label.lower(): key for key, choice in SCHEDULERS.items()}, **_SAMPLER_ALIASES}
# A1111 keys we read or that say nothing about the picture; every other key becomes a note.
_A1111_KNOWN = {"steps", "sampler", "cfg scale", "seed", "size", "model", "model hash", "lora hashes", "subject",
                "version", "ti hashes", "denoising strength", "mask blur", "hires upscale", "hires steps", "hires upscaler"}

_parsers = ParserManager(eagerness=Eagerness.FAST)


class PngSettingsError(ValueError):
    """The upload is not a PNG we can read settings from; the message is for the user."""


def settings_from_png(file: IO[bytes] | bytes) -> dict[str, Any]:
    """The Generate form's fields found in the PNG's metadata, plus `generator` (which tool wrote it)
    and `notes` (what was there but could not be carried over). Fields not found are left out.

    Raises PngSettingsError for a file that is too big, not a PNG, or carries no generation settings."""
    image = _open_png(file)
    try:
        found = _parsers.parse(image)
    finally:
        image.close()
    if found is None:
        raise PngSettingsError("This PNG carries no generation settings we can read (AUTOMATIC1111, ComfyUI, InvokeAI or imagesite).")
    return _to_form(found)


def _open_png(file: IO[bytes] | bytes) -> Image.Image:
    data = file if isinstance(file, bytes) else file.read(MAX_PNG_BYTES + 1)
    if len(data) > MAX_PNG_BYTES:
        raise PngSettingsError(f"The file is over {MAX_PNG_BYTES // (1024 * 1024)} MiB.")
    if not data.startswith(PNG_SIGNATURE):
        raise PngSettingsError("This is not a PNG file (settings are read from PNGs only).")
    try:
        # Image.open reads the header and the chunks before the pixel data; nothing is decoded.
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise PngSettingsError(f"This PNG cannot be read: {error}") from error
    if not any(isinstance(value, str) for value in image.info.values()):
        image.close()
        raise PngSettingsError("This PNG has no metadata (its text chunks are missing or were stripped).")
    return image


def _to_form(found: PromptInfo) -> dict[str, Any]:
    notes: list[str] = []
    settings: dict[str, Any] = {"generator": found.generator.value}
    if len(found.samplers) > 1:
        notes.append(f"The workflow has {len(found.samplers)} samplers; the first one's settings were used.")
    settings["prompt"] = found.full_prompt
    settings["negative_prompt"] = found.full_negative_prompt
    sampler = found.samplers[0] if found.samplers else None
    params = dict(sampler.parameters) if sampler else {}
    for ours, theirs, kind in (("seed", "seed", int), ("steps", "steps", int), ("guidance_scale", "cfg_scale", float)):
        if theirs in params:
            try:
                settings[ours] = kind(params.pop(theirs))
            except (TypeError, ValueError):
                notes.append(f"{theirs} is not a number: {params[theirs]!r}.")
    if sampler:
        _read_scheduler(sampler.name, params, settings, notes)
        if sampler.model is not None and isinstance(sampler.model.name, str):
            settings["model"] = _model_name(sampler.model.name)
    if found.generator.name == "INVOKEAI" and "model" not in settings:
        settings["model"] = _invokeai_model(found.raw_parameters.get("invokeai_metadata"))
    _read_size(found, settings, notes)
    if found.generator.name == "COMFYUI":
        graph = _comfy_graph(found.raw_parameters.get("prompt"))
        settings["prompt"] = _with_comfy_loras(settings["prompt"], graph)
        # sd-parsers 0.6 names a LoRA loader's input link as the model when one sits in between
        settings.setdefault("model", next((_model_name(str(node["inputs"]["ckpt_name"])) for node in graph.values()
                                           if isinstance(node.get("inputs", {}).get("ckpt_name"), str)), None))
        params.pop("denoise", None)
    if settings.get("model") is None:
        settings.pop("model", None)
    for key, value in params.items():
        notes.append(f"Not carried over: {key} {value}.")
    settings["notes"] = notes
    return settings


def _read_scheduler(name: str, params: dict, settings: dict, notes: list[str]) -> None:
    schedule = str(params.pop("scheduler", "") or "")
    label = name.strip()
    key = _SAMPLERS.get(label.lower())
    if key is None:
        notes.append(f"Sampler {label!r} is not offered here; pick one yourself.")
        return
    settings["scheduler"] = key
    karras = "karras" in label.lower() or label.lower().endswith("_k") or schedule.lower() == "karras"
    if karras:
        notes.append(f"{label}: the Karras noise schedule is not offered here; {SCHEDULERS[key].label} uses the model's own schedule.")
    elif schedule and schedule.lower() not in ("normal", "automatic", "simple"):
        notes.append(f"Not carried over: the {schedule!r} noise schedule.")


def _read_size(found: PromptInfo, settings: dict, notes: list[str]) -> None:
    meta = found.metadata
    if found.generator.name == "AUTOMATIC1111":
        # sd-parsers 0.6 splits quoted values ("Model: \"a, b\"") at the comma; read the line as A1111 does
        # (and at the commas inside them: "Lora hashes" with two LoRAs made a key of the second's name)
        meta = _a1111_fields(str(found.raw_parameters.get("parameters", ""))) or meta
        if meta.get("Model"):
            settings["model"] = str(meta["Model"])
        size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(meta.get("Size", "")))
        if size:
            settings["width"], settings["height"] = int(size[1]), int(size[2])
        _read_studio(meta, settings, notes)
        _read_subject(meta, settings)
        for key, value in meta.items():
            if key.lower() not in _A1111_KNOWN:
                notes.append(f"Not carried over: {key} {value}.")
        return
    if found.generator.name == "COMFYUI":
        latent = (meta.get("EmptyLatentImage") or meta.get("EmptySD3LatentImage") or [{}])[0]
        meta = latent if isinstance(latent, dict) else {}
    for side in ("width", "height"):
        try:
            settings[side] = int(meta[side])
        except (KeyError, TypeError, ValueError):
            pass


def _read_studio(meta: dict, settings: dict, notes: list[str]) -> None:
    """img2img, inpainting and hires fix from A1111's keys. `Denoising strength` is the hires pass's
    when the file has `Hires upscale` (A1111's txt2img), else the img2img strength."""
    hires = "Hires upscale" in meta
    for key, field, kind in (("Denoising strength", "hires_strength" if hires else "strength", float), ("Mask blur", "mask_blur", int),
                             ("Hires upscale", "hires_scale", float), ("Hires steps", "hires_steps", int)):
        if key in meta:
            try:
                settings[field] = kind(str(meta[key]).strip())
            except ValueError:
                notes.append(f"{key} is not a number: {meta[key]!r}.")
    upscaler = str(meta.get("Hires upscaler", "")).strip()
    if upscaler.lower().startswith("latent"):
        settings["hires_upscaler"] = "latent"
        if upscaler.lower() != "latent":
            notes.append(f"Hires upscaler {upscaler!r}: the plain Latent (bilinear) upscaler is used here.")
    elif upscaler.lower() == "lanczos":
        settings["hires_upscaler"] = "lanczos"
    elif upscaler:
        settings["hires_upscaler"] = "lanczos"
        notes.append(f"Hires upscaler {upscaler!r} is not offered here; Lanczos is used instead.")


def _read_subject(meta: dict, settings: dict) -> None:
    """Our `Subject` key (the subject chosen in the form's subject field) and A1111's `Lora hashes`
    ("name: hash, name: hash"; imagesite lists a subject there by its token). `attach_subject` maps
    them to the reader's own subjects."""
    if str(meta.get("Subject", "")).strip():
        settings["subject_name"] = str(meta["Subject"]).strip()
    hashes = {}
    for entry in str(meta.get("Lora hashes", "")).split(","):
        name, _, digest = entry.rpartition(":")
        if name.strip():
            hashes[name.strip()] = digest.strip()
    if hashes:
        settings["lora_hashes"] = hashes


def attach_subject(settings: dict[str, Any], owner) -> dict[str, Any]:
    """`settings` (from settings_from_png) with `subject`: the id of the owner's own trained subject
    the file was made with, for the form's subject field. The file names it by `Subject` (its name)
    or by a `Lora hashes` name that no `<lora:…>` tag of the prompt carries (its token). A subject
    the owner does not have is a note; a tag in the prompt needs nothing here: `<lora:token:w>`
    finds the owner's subject by its token when the form is sent."""
    name = settings.get("subject_name", "")
    tagged = {tag.name.lower() for tag in extract_lora_tags(settings.get("prompt", ""))[1]}
    untagged = [token for token in settings.get("lora_hashes", {}) if token.lower() not in tagged]
    if not name and not untagged:
        return settings
    # By name when the file has one: a token alone ("sks" is everyone's first) would pick another subject.
    tokens = {token.lower() for token in untagged}
    subjects = [s for s in usable_subjects(owner) if (s.name.lower() == name.lower() if name else s.token.lower() in tokens)]
    subject = next((s for s in subjects if s.token.lower() in tokens), None) or next(iter(subjects), None)
    notes = settings.setdefault("notes", [])
    if subject is not None:
        settings["subject"] = subject.pk
        notes.append(f"Made with the subject “{name or subject.name}”: your subject “{subject.name}” ({subject.token}) is attached.")
    elif name:
        notes.append(f"Made with the subject “{name}”, which you do not have: it is not attached.")
    else:
        notes.extend(f"Made with the LoRA “{token}” (not in the prompt), which you do not have." for token in untagged)
    return settings


_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # AUTOMATIC1111's re_param


def _a1111_fields(text: str) -> dict[str, str]:
    """The "Key: value, ..." line at the end of A1111's parameters text, quoted values unquoted."""
    fields = {}
    for key, value in _A1111_PARAM.findall(text.strip().splitlines()[-1] if text.strip() else ""):
        if value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        fields[key.strip()] = value
    return fields


def _model_name(name: str) -> str | None:
    """A checkpoint's name without its folder and file extension ("sd15/dreamshaper_8.safetensors" -> "dreamshaper_8")."""
    name = PurePath(name.replace("\\", "/")).name
    return re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", name) or None


def _invokeai_model(text: Any) -> str | None:
    """InvokeAI 4+ writes the model as {"name": ...}; sd-parsers 0.6 reads only the older "model_name"."""
    try:
        model = json.loads(text).get("model") or {}
        return str(model.get("name") or model.get("model_name") or "") or None
    except (TypeError, ValueError, AttributeError):
        return None


def _comfy_graph(text: Any) -> dict[str, dict]:
    try:
        graph = text if isinstance(text, dict) else json.loads(text)
    except (TypeError, ValueError):
        return {}
    return {key: node for key, node in graph.items() if isinstance(node, dict)} if isinstance(graph, dict) else {}


def _with_comfy_loras(prompt: str, graph: dict[str, dict]) -> str:
    """ComfyUI applies LoRAs with loader nodes, not tags; write them as A1111 tags so the prompt says so."""
    tags = []
    for node in graph.values():
        if str(node.get("class_type", "")).startswith("LoraLoader"):
            inputs = node.get("inputs", {})
            name = _model_name(str(inputs.get("lora_name", "")))
            if name:
                tags.append(f"<lora:{name}:{float(inputs.get('strength_model', 1.0)):g}>")
    return ", ".join([prompt, *tags]) if tags and prompt else prompt or ", ".join(tags)
