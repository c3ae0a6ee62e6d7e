"""What the configured base model can do, read from its config files without importing torch.

The web process uses this for form defaults and limits; only the worker loads the weights. The
family (generation/families.py) sets the defaults, size limits and presets; a folder's own config
(its native size) and its `imagesite.json` refine them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import GenerationError
from .families import FAMILIES, SINGLE_FILE_SUFFIXES, Family, detect_family

# Stable Diffusion 1.x defaults (the family's), kept for callers that name them.
SD1_DEFAULTS = {"width": 512, "height": 512, "steps": 25, "guidance_scale": 7.5, "scheduler": "dpmpp_2m"}
DEFAULT_KEYS = tuple(SD1_DEFAULTS)


@dataclass(frozen=True)
class SchedulerChoice:
    label: str  # AUTOMATIC1111's sampler name, written into the PNG parameters
    class_name: str  # diffusers scheduler class, built from the loaded scheduler's config
    options: tuple[tuple[str, object], ...] = ()


SCHEDULERS: dict[str, SchedulerChoice] = {
    "dpmpp_2m": SchedulerChoice("DPM++ 2M", "DPMSolverMultistepScheduler", (("algorithm_type", "dpmsolver++"), ("solver_order", 2))),
    "euler_a": SchedulerChoice("Euler a", "EulerAncestralDiscreteScheduler"),
    "euler": SchedulerChoice("Euler", "EulerDiscreteScheduler"),
    # clip_sample: DDIM's own default clips x0 to [-1, 1], which is for pixels, not SD latents (the
    # configs SD ships for DDIM turn it off; without it the demo drew a purple centre on red).
    "ddim": SchedulerChoice("DDIM", "DDIMScheduler", (("clip_sample", False),)),
    "pndm": SchedulerChoice("PLMS", "PNDMScheduler", (("skip_prk_steps", True),)),
}


@dataclass(frozen=True)
class ModelInfo:
    source: str  # what IMAGESITE_MODEL says
    kind: str  # "folder" | "single_file" | "hub"
    name: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    min_size: int
    max_size: int
    example_prompts: tuple[str, ...] = field(default_factory=tuple)
    # Prompts typical of the model, for DreamBooth's prior preservation (imagesite.json "prior_prompts").
    prior_prompts: tuple[str, ...] = field(default_factory=tuple)
    # Plain background colours the model's captions name, as (name, (r, g, b)) (imagesite.json
    # "caption_backgrounds"): subject photos on one of them get a caption suggested.
    caption_backgrounds: tuple[tuple[str, tuple[int, int, int]], ...] = field(default_factory=tuple)
    family: str = "sd1"  # a key of families.FAMILIES
    family_label: str = "Stable Diffusion 1.x"
    # (width, height) choices for the form, native size first, scaled to this model's native size.
    aspect_presets: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    # An inpainting checkpoint (9-channel UNet; families.Family.inpainting): the catalog says
    # "inpainting model" (in family_label); it draws every mode; not a base to train subjects on.
    inpainting: bool = False
    # Why the model cannot be used (unsupported family, damaged file), for pages to show; the worker
    # raises the same message when it tries to load it. None when all is well.
    problem: str | None = None

    @property
    def native_size(self) -> int:
        return max(self.width, self.height)

    def defaults(self) -> dict:
        """The settings a new job starts from: the model's own (the form, the API and the bench)."""
        return {"steps": self.steps, "guidance_scale": self.guidance_scale, "width": self.width,
                "height": self.height, "scheduler": self.scheduler, "num_images": 1}

    @property
    def is_small(self) -> bool:
        """Tiny models' images are shown scaled up with nearest-neighbour."""
        return self.native_size <= 128


def model_kind(source: str) -> str:
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return "single_file"
    return "hub"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _scaled_presets(family: Family, native: int) -> tuple[tuple[int, int], ...]:
    """The family's presets at this model's native size (a 64 px test model gets 64 px presets),
    each side a multiple of 8; duplicates dropped."""
    scale = native / family.native_size
    presets: list[tuple[int, int]] = []
    for width, height in family.aspect_presets:
        size = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
        if size not in presets:
            presets.append(size)
    return tuple(presets)


@lru_cache(maxsize=8)
def describe_model(source: str) -> ModelInfo:
    """What the web needs to know of a model (no torch): its family, defaults, size limits and
    presets. Never raises for a model the worker will refuse: `problem` says why instead."""
    kind = model_kind(source)
    problem = None
    try:
        family = detect_family(source)
    except GenerationError as exc:
        family, problem = FAMILIES["sd1"], str(exc)
    values = {"width": family.native_size, "height": family.native_size, "steps": family.steps,
              "guidance_scale": family.guidance_scale, "scheduler": "dpmpp_2m"}
    name = Path(source).name if kind != "hub" else source
    extra: dict = {}
    if kind == "folder":
        folder = Path(source)
        unet = _read_json(folder / "unet" / "config.json")
        vae = _read_json(folder / "vae" / "config.json")
        if unet.get("sample_size") and vae.get("block_out_channels"):
            scale = 2 ** (len(vae["block_out_channels"]) - 1)
            values["width"] = values["height"] = int(unet["sample_size"]) * scale
        extra = _read_json(folder / "imagesite.json")
        values.update({k: extra[k] for k in DEFAULT_KEYS if k in extra})
        name = extra.get("name", name)
    native = max(values["width"], values["height"])
    return ModelInfo(
        source=source,
        kind=kind,
        name=name,
        width=int(values["width"]),
        height=int(values["height"]),
        steps=int(values["steps"]),
        guidance_scale=float(values["guidance_scale"]),
        scheduler=str(values["scheduler"]),
        min_size=int(extra.get("min_size", max(32, native // 2))),
        max_size=int(extra.get("max_size", native * 2)),
        example_prompts=tuple(extra.get("example_prompts", ())),
        prior_prompts=tuple(extra.get("prior_prompts", ())),
        caption_backgrounds=tuple((str(name), tuple(int(v) for v in rgb)) for name, rgb in extra.get("caption_backgrounds", {}).items()),
        family=family.key,
        family_label=family.label,
        inpainting=family.inpainting,
        aspect_presets=_scaled_presets(family, native),
        problem=problem,
    )
