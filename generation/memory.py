"""Memory profiles: which diffusers memory features a job runs with, and how `auto` picks one by the
model's real need against the GPU's free memory. Torch-free (plain numbers in, a plan out), so pages
and benches can reason about profiles too; generation.pipeline applies the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint_keys import read_safetensors_keys
from .errors import GenerationError
from .families import FAMILIES, Family

PROFILES = ("full", "medium", "low", "cpu")
GIB = 1024**3
# Headroom on top of an estimate: allocator fragmentation, the CUDA context's growth, other processes.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = GIB // 2
# What the component on the GPU adds to its weights under the medium profile (model offload with
# attention and VAE slicing): one sliced UNet step at native size. The VAE decode peaks higher but
# runs with only the VAE's 0.17 GB (0.33 GB upcast) of weights there. An estimate, as above.
OFFLOAD_ACTIVATIONS_BYTES = GIB


@dataclass(frozen=True)
class MemoryPlan:
    """Which diffusers memory features a profile turns on, after dropping what the device can't do."""

    profile: str
    device: str  # "cuda" | "cuda:N" | "cpu"
    half_precision: bool = False  # fp16 weights (SDPA is torch 2's default attention everywhere)
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    model_cpu_offload: bool = False
    sequential_cpu_offload: bool = False
    skipped: tuple[str, ...] = field(default_factory=tuple)


_WANTS = {
    "full": {"half_precision": True},
    "medium": {"half_precision": True, "attention_slicing": True, "vae_slicing": True, "model_cpu_offload": True},
    "low": {
        "half_precision": True,
        "attention_slicing": True,
        "vae_slicing": True,
        "vae_tiling": True,
        "sequential_cpu_offload": True,
    },
    # float32 on the CPU: fp16 matmuls are slow or missing there; VAE slicing bounds peak memory of batches.
    "cpu": {"vae_slicing": True},
}
_NEEDS_ACCELERATOR = ("half_precision", "model_cpu_offload", "sequential_cpu_offload")


@dataclass(frozen=True)
class MemoryNeed:
    """GPU bytes to render one image at native size in fp16: all of it on the GPU (`full`), and the
    largest component alone (what model offload keeps there at once)."""

    full_bytes: int
    largest_bytes: int

    @classmethod
    def of_family(cls, family: Family) -> "MemoryNeed":
        """The family's reference figures (families.py), for a model whose own weights cannot be read."""
        return cls(family.vram_fp16_bytes, family.largest_fp16_bytes)

    def fits_full(self, free_bytes: int) -> bool:
        return free_bytes >= self.full_bytes * (1 + MARGIN_FRACTION) + MARGIN_BYTES

    def fits_offload(self, free_bytes: int) -> bool:
        return free_bytes >= (self.largest_bytes + OFFLOAD_ACTIVATIONS_BYTES) * (1 + MARGIN_FRACTION) + MARGIN_BYTES


SD1_NEED = MemoryNeed.of_family(FAMILIES["sd1"])


def memory_need(source: str, family: Family) -> MemoryNeed:
    """The family's figures, or, for a diffusers folder whose weight headers can be read, its own
    weights in fp16 plus the family's activations (a model larger or smaller than its family's
    reference gets its own size). Reads only safetensors headers."""
    weights = _folder_weights_fp16(Path(source)) if Path(source).is_dir() else None
    if not weights:
        return MemoryNeed.of_family(family)
    return MemoryNeed(sum(weights.values()) + _image_activations(family), max(weights.values()))


def _image_activations(family: Family) -> int:
    """Bytes of one image's activations at the family's native size in fp16: its need less its weights."""
    return family.vram_fp16_bytes - family.weights_fp16_bytes


def _folder_weights_fp16(folder: Path) -> dict[str, int]:
    """Component name -> bytes of its weights in fp16 (2 bytes per element of a floating tensor)."""
    sizes: dict[str, int] = {}
    for weights in folder.glob("*/*.safetensors"):
        try:
            found = read_safetensors_keys(weights)
        except (GenerationError, OSError):
            return {}
        sizes[weights.parent.name] = sizes.get(weights.parent.name, 0) + 2 * sum(
            _numel(shape) for shape in found.shapes.values())
    return sizes


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def resolve_profile(requested: str, *, cuda_available: bool, free_vram_bytes: int = 0, need: MemoryNeed = SD1_NEED) -> str:
    """Turn `auto` into a concrete profile by the model's need against free VRAM: `full` when the
    whole model and one image's activations fit with a margin, `medium` (model offload) when the
    largest component does, else `low`. Anything else passes through after validation."""
    if requested not in (*PROFILES, "auto"):
        raise GenerationError(f"Unknown memory profile {requested!r}; use one of auto, {', '.join(PROFILES)}.")
    if requested != "auto":
        return requested
    if not cuda_available:
        return "cpu"
    if need.fits_full(free_vram_bytes):
        return "full"
    if need.fits_offload(free_vram_bytes):
        return "medium"
    return "low"


def plan_memory(profile: str, *, cuda_available: bool, device: str = "cuda") -> MemoryPlan:
    """Map a profile to the features to switch on; on a machine without CUDA, keep what runs on the
    CPU (slicing, tiling) and list what was skipped so the worker can log it. `device` is the GPU
    this worker is pinned to."""
    wants = dict(_WANTS[profile])
    skipped: list[str] = []
    if not cuda_available:
        for feature in _NEEDS_ACCELERATOR:
            if wants.pop(feature, False):
                skipped.append(feature)
    return MemoryPlan(profile=profile, device=device if cuda_available else "cpu", skipped=tuple(skipped), **wants)


def lower_profile(profile: str) -> str | None:
    order = ("full", "medium", "low")
    return order[order.index(profile) + 1] if profile in order[:-1] else None


def max_batch_images(profile: str, family: Family, width: int, height: int, *, free_bytes: int = 0,
                     need: MemoryNeed | None = None) -> int | None:
    """How many images one pipeline call may hold under the memory plan `profile`, for jobs of `family`
    at `width`×`height`; None: the plan sets no bound (the CPU: IMAGESITE_MAX_BATCH alone does).
    `free_bytes`: the GPU memory the worker may use (free now plus what its own allocator holds);
    `need`: the model's (memory_need), else its family's figures.

    The rule, with resolve_profile's margins: n images fit when
    free_bytes ≥ (resident + n × per_image) × (1 + MARGIN_FRACTION) + MARGIN_BYTES, at least 1 (the
    plan was chosen for one image), where
    - `full`: resident = all weights; per_image = the family's activations at native size (families.py:
      vram_fp16 less weights_fp16, SD 1.x 1.36 GB at 512², SDXL 2.56 GB at 1024²) scaled by pixels;
    - `medium` (model offload): resident = the largest component; per_image = OFFLOAD_ACTIVATIONS_BYTES
      (one sliced UNet step at native size; VAE slicing decodes image by image) scaled by pixels;
    - `low` (sequential offload): 1, the card is short of even one component and one image.
    The figures are estimates that err large: on an H200 (docs/measurements/gpu_check-h200-sd15.json)
    SD 1.5 at 512² peaked at 2.83 GB allocated under `full` (0.69 GB over its 2.14 GB of weights) and
    2.10 GB under `medium` (0.38 GB over its 1.72 GB UNet). So SDXL at 1024² gets 1 image a call on a
    12 GB card (full) or a 10 GB one (medium: 2), 2 on 16 GB, 5 on 24 GB; SD 1.5 at 512² 3 on 8 GB."""
    if profile not in PROFILES:
        raise GenerationError(f"Unknown memory profile {profile!r}; use one of {', '.join(PROFILES)}.")
    if profile == "cpu":
        return None
    if profile == "low":
        return 1
    need = need or MemoryNeed.of_family(family)
    pixels = width * height / family.native_size**2
    if profile == "full":
        per_image = _image_activations(family)
        resident = need.full_bytes - per_image
    else:
        per_image, resident = OFFLOAD_ACTIVATIONS_BYTES, need.largest_bytes
    room = (free_bytes - MARGIN_BYTES) / (1 + MARGIN_FRACTION) - resident
    return max(1, int(room // (per_image * pixels)))
