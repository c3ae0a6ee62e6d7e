"""Model families: which Stable Diffusion a model is, read from its files, and what follows from it.

A family picks the diffusers pipeline class, the configs a single file is built with (shipped with the
project, no weights), the form's defaults, sizes and presets, and the memory it needs. Torch-free: the
web process detects families to show the form; only the worker loads weights.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .checkpoint_keys import UNET_CONV_IN, FileKeys, read_file_keys
from .errors import GenerationError

log = logging.getLogger("generation.families")

HERE = Path(__file__).resolve().parent
GB = 10**9
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


@dataclass(frozen=True)
class Family:
    key: str  # "sd1" | "sd2" | "sd2v" | "sdxl"
    label: str
    pipeline_class: str  # a diffusers pipeline class name
    native_size: int  # px, the side it was trained at
    prediction_type: str  # "epsilon" | "v_prediction"
    text_encoders: int
    config_dir: Path  # diffusers configs + tokenizers that build a single file of this family
    aspect_presets: tuple[tuple[int, int], ...]  # (width, height), native size first
    steps: int
    guidance_scale: float
    # Rough GPU memory to render one image at native size in fp16 with no offload, and the largest
    # single component (the UNet) in fp16: what `auto` weighs against free VRAM.
    vram_fp16_bytes: int
    largest_fp16_bytes: int
    weights_fp16_bytes: int  # all weights in fp16 (vram_fp16_bytes less one image's activations)
    # An inpainting checkpoint of the family (its UNet takes 9 input channels: latents, mask, masked
    # image). It keeps its family's key (its LoRAs, embeddings and subjects fit) and draws every mode
    # through the inpaint pipeline (generation.pipeline_modes). Not a base to train subjects on.
    inpainting: bool = False

    @property
    def min_size(self) -> int:
        return self.native_size // 2

    @property
    def max_size(self) -> int:
        return self.native_size * 2

    @property
    def takes_safety_checker(self) -> bool:
        """SD 1.x/2.x pipeline classes take `safety_checker` arguments; SDXL's have none."""
        return self.text_encoders == 1


# Sizes around 512 px: 1:1, 2:3, 3:2, 4:5, 5:4 and 7:12, 12:7 (about 9:16, 16:9), sides multiples of 64;
# around 768 px: 1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9.
_SD512 = ((512, 512), (512, 768), (768, 512), (512, 640), (640, 512), (448, 768), (768, 448))
_SD768 = ((768, 768), (640, 960), (960, 640), (672, 896), (896, 672), (576, 1024), (1024, 576))
# SDXL's training buckets (the SDXL paper's appendix, as Fooocus and kohya's presets list them).
_SDXL = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
         (1536, 640), (640, 1536))

# Memory: weights are the shipped configs' parameter counts x 2 bytes (SD 1.5 2.14 GB, SD 2.x 2.6 GB,
# SDXL 6.94 GB; tests/test_families.py counts them on the meta device, ML-FACTS.md "Full-size models").
# On top of that, one image's activations and the VAE decode at native size with SDPA (the VAE decode
# is the peak): ~1.3 GB at 512², ~1.8 GB at 768², ~2.5 GB at 1024² with SDXL's VAE upcast to fp32
# (diffusers' "Reduce memory usage" guide and its SDXL page give 3-4 GB for SD 1.5 and 9-10 GB for
# SDXL in fp16 without offload). Estimates until bench/gpu_check.sh measures them on a lent GPU.
FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "Stable Diffusion 1.x", "StableDiffusionPipeline", 512, "epsilon", 1, HERE / "sd15_config",
                  _SD512, 25, 7.5, int(3.5 * GB), int(1.72 * GB), int(2.14 * GB)),
    "sd2": Family("sd2", "Stable Diffusion 2.x (512)", "StableDiffusionPipeline", 512, "epsilon", 1, HERE / "sd2_config",
                  _SD512, 25, 7.5, int(4.0 * GB), int(1.73 * GB), int(2.58 * GB)),
    "sd2v": Family("sd2v", "Stable Diffusion 2.x (768-v)", "StableDiffusionPipeline", 768, "v_prediction", 1,
                   HERE / "sd2v_config", _SD768, 25, 7.5, int(4.5 * GB), int(1.73 * GB), int(2.58 * GB)),
    # Guidance 6: diffusers' SDXL pipeline defaults to 5.0, AUTOMATIC1111 and ComfyUI to 7-8.
    "sdxl": Family("sdxl", "SDXL", "StableDiffusionXLPipeline", 1024, "epsilon", 2, HERE / "sdxl_config",
                   _SDXL, 30, 6.0, int(9.5 * GB), int(5.14 * GB), int(6.94 * GB)),
}
SUPPORTED = "Stable Diffusion 1.x, Stable Diffusion 2.x (512 and 768-v) and SDXL, and their inpainting models"
INPAINT_CHANNELS = 9  # an inpainting UNet's input: latents 4 + mask 1 + masked image's latents 4
# The pipeline class an inpainting checkpoint of each family loads as.
_INPAINT_PIPELINES = {"StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
                      "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline"}


def inpainting_variant(family: Family) -> Family:
    """`family`'s inpainting checkpoint: the same key, configs, defaults and sizes; a label that says
    so, the inpaint pipeline class and `inpainting` set."""
    return replace(family, inpainting=True, label=f"{family.label}, inpainting model",
                   pipeline_class=_INPAINT_PIPELINES[family.pipeline_class])


class UnsupportedModel(GenerationError):
    """A model imagesite recognises but cannot run; the message names what it is."""

    def __init__(self, name: str, what: str, advice: str = ""):
        self.what = what
        super().__init__(f"{name} is {what}, which imagesite cannot use as a base model. "
                         f"Supported: {SUPPORTED}.{' ' + advice if advice else ''}")


def family_of(key: str) -> Family:
    return FAMILIES[key]


@lru_cache(maxsize=16)
def _detect_cached(source: str, stamp: tuple) -> Family:
    path = Path(source)
    if path.is_dir():
        return _detect_folder(path)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return _detect_single_file(path)
    return FAMILIES["sd1"]  # a hub id: only works online; SD 1.x unless its folder says otherwise


def detect_family(source: str) -> Family:
    """The family of a diffusers folder, a single `.safetensors`/`.ckpt` file or a hub id (SD 1.x).

    Raises UnsupportedModel for a model of another kind (SD3, Flux, an SDXL refiner, a LoRA, ...) and
    GenerationError for a damaged or unknown file. Reads only configs and headers; cached per file
    version (path, size, modification time; a folder's configs, a file's .yaml)."""
    path = Path(source)
    try:
        stat = path.stat()
        stamp: tuple = (stat.st_size, stat.st_mtime_ns)
        if path.is_dir():
            stamp += tuple(_stat_or_none(path / name) for name in ("model_index.json", "text_encoder/config.json",
                                                                     "scheduler/scheduler_config.json", "unet/config.json"))
        else:
            stamp += (_stat_or_none(path.with_suffix(".yaml")),)  # an SD 2.x file's yaml decides v or not
    except OSError:
        stamp = ()
    return _detect_cached(str(source), stamp)


def _stat_or_none(path: Path):
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


# --- folders -------------------------------------------------------------------------------------
# model_index.json `_class_name` of pipelines imagesite does not run -> what to call them.
_OTHER_PIPELINES = (
    ("StableDiffusion3", "Stable Diffusion 3"), ("Flux", "a FLUX model"), ("StableCascade", "Stable Cascade"),
    ("Wuerstchen", "Würstchen"), ("PixArt", "PixArt"), ("Sana", "Sana"), ("Kandinsky", "Kandinsky"),
    ("Kolors", "Kolors"), ("HunyuanDiT", "Hunyuan-DiT"), ("AuraFlow", "AuraFlow"), ("Lumina", "Lumina"),
    ("IFPipeline", "DeepFloyd IF"), ("LatentConsistency", "a latent consistency model"),
    ("StableDiffusionXLImg2Img", "an SDXL refiner"), ("Inpaint", "an inpainting model of a kind imagesite does not run"),
    ("StableDiffusionUpscale", "the Stable Diffusion x4 upscaler"), ("Depth2Img", "a depth-to-image model"),
    ("InstructPix2Pix", "InstructPix2Pix"), ("StableVideoDiffusion", "Stable Video Diffusion"),
)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{path.parent.name}/{path.name} of the model cannot be read ({exc}).") from None
    return data if isinstance(data, dict) else {}


def _detect_folder(folder: Path) -> Family:
    index = _read_json(folder / "model_index.json")
    if not index:
        raise GenerationError(f"{folder} is not a diffusers model folder (no readable model_index.json).")
    cls = str(index.get("_class_name", ""))
    if cls in ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"):
        family = FAMILIES["sdxl"]
    elif cls in ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline"):
        text = _read_json(folder / "text_encoder" / "config.json")
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
        # OpenCLIP (SD 2.x) uses gelu; OpenAI's CLIP-L (SD 1.x) quick_gelu. Structure, not size:
        # tiny test models have the real models' activations.
        if text.get("hidden_act") == "gelu" or text.get("hidden_size") == 1024:
            family = FAMILIES["sd2v" if scheduler.get("prediction_type") == "v_prediction" else "sd2"]
        else:
            family = FAMILIES["sd1"]
    else:
        for fragment, what in _OTHER_PIPELINES:
            if fragment in cls:
                raise UnsupportedModel(folder.name, what)
        raise UnsupportedModel(folder.name, f"a {cls or 'model of unknown kind'} model")
    # The pipeline class a folder names does not decide: the UNet's input does (runwayml's inpainting
    # folder says StableDiffusionInpaintPipeline, a merge saved by a script may say StableDiffusionPipeline).
    channels = _read_json(folder / "unet" / "config.json").get("in_channels", 4)
    return inpainting_variant(family) if _inpainting_unet(folder.name, channels if isinstance(channels, int) else 4) else family


def _inpainting_unet(name: str, channels: int) -> bool:
    """Whether a UNet taking `channels` inputs is an inpainting one (9); text-to-image (4) is not;
    any other is refused, named by what takes that input."""
    if channels not in (4, INPAINT_CHANNELS):
        raise UnsupportedModel(name, _CONV_IN_CHANNELS.get(channels, f"a model whose UNet takes {channels} input channels"))
    return channels == INPAINT_CHANNELS


# --- single files --------------------------------------------------------------------------------
# (key fragment, what the file is, advice); checked in order, before the Stable Diffusion families.
_NOT_BASE_MODELS = (
    (("lora_unet_", "lora_te", ".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", ".hada_w1", ".lokr_w1"),
     "a LoRA (or LyCORIS) file, not a base model",
     "Base models are whole checkpoints (usually 2-7 GB); a LoRA is applied on top of one."),
    (("joint_blocks.",), "Stable Diffusion 3", ""),
    (("double_blocks.",), "a FLUX model", ""),
    (("clip_txt_mapper.", "down_blocks.1.0.channelwise."), "a Stable Cascade model", ""),
    (("y_embedder.", "t_block."), "a PixArt/DiT model", ""),
    (("double_layers.", "cond_seq_linear."), "an AuraFlow model", ""),
    (("control_model.", "input_hint_block."), "a ControlNet", ""),
    (("time_stack.",), "Stable Video Diffusion", ""),
    (("motion_modules.",), "an AnimateDiff motion module", ""),
)
# Marker tensors some SDXL derivatives carry (exact names).
_MARKER_KEYS = {"edm_mean": "Playground v2.5 (an EDM model)",
                "v_pred": "an SDXL v-prediction model (NoobAI-XL v-pred style)"}
_EMBEDDING_KEYS = {"emb_params", "string_to_param", "string_to_token", "name", "step", "clip_l", "clip_g"}
# UNet input channels other than 4 (text-to-image) and 9 (inpainting, see INPAINT_CHANNELS).
_CONV_IN_CHANNELS = {8: "an InstructPix2Pix model", 7: "the Stable Diffusion x4 upscaler", 5: "a depth-to-image model"}


def _detect_single_file(path: Path) -> Family:
    found = read_file_keys(path)
    if not found.scanned:
        log.info("%s: a legacy-format .ckpt whose keys cannot be listed; assuming Stable Diffusion 1.x", path.name)
        return FAMILIES["sd1"]
    return classify_keys(path, found)


def classify_keys(path: Path, found: FileKeys) -> Family:
    """The family of a single file from its tensor names (and the UNet's first convolution's shape)."""
    if not found.keys:
        raise GenerationError(f"{path.name} holds no tensors: it is not a model checkpoint.")
    if all(key.split(".")[0] in _EMBEDDING_KEYS for key in found.keys):
        raise UnsupportedModel(path.name, "a textual-inversion embedding, not a base model")
    for key, what in _MARKER_KEYS.items():
        if key in found.keys:
            raise UnsupportedModel(path.name, what)
    for fragments, what, advice in _NOT_BASE_MODELS:
        if found.has(*fragments):
            raise UnsupportedModel(path.name, what, advice)
    channels = (found.shapes.get(UNET_CONV_IN) or (0, 4))[1:2] or (4,)
    inpainting = _inpainting_unet(path.name, channels[0])
    family = _family_from_keys(path, found, inpainting=inpainting)
    return inpainting_variant(family) if inpainting else family


def _family_from_keys(path: Path, found: FileKeys, *, inpainting: bool) -> Family:
    has_unet = found.starts("model.diffusion_model.")
    if found.starts("conditioner.embedders.1.model."):
        return FAMILIES["sdxl"]
    if found.starts("conditioner.embedders.0.model."):
        raise UnsupportedModel(path.name, "an SDXL refiner (it only refines SDXL images)", "Use an SDXL base model.")
    if found.starts("cond_stage_model.model."):
        return _sd2_from_yaml(path, inpainting=inpainting)
    if found.starts("cond_stage_model.transformer."):
        return FAMILIES["sd1"]
    if has_unet:
        raise UnsupportedModel(path.name, "a UNet alone, without its text encoder and VAE")
    if found.starts("first_stage_model.", "encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks."):
        raise UnsupportedModel(path.name, "a VAE alone, not a whole model")
    if found.starts("down_blocks.", "text_model.", "encoder.layers."):
        raise UnsupportedModel(path.name, "one component of a diffusers folder", "Point at the whole folder instead.")
    raise UnsupportedModel(path.name, "not a Stable Diffusion checkpoint imagesite recognises")


_V_PARAMETERIZATION = re.compile(r"^\s*parameterization:\s*[\"']?v[\"']?\s*(#.*)?$", re.MULTILINE)


def _sd2_from_yaml(path: Path, *, inpainting: bool = False) -> Family:
    """SD 2.x files look alike for 512-epsilon and 768-v. AUTOMATIC1111's convention tells them apart:
    a same-name `.yaml` beside the file, which says `parameterization: "v"` for the v models. Without
    one: the 768-v model (SD 2.1 768), or for an inpainting file the 512 epsilon one (SD 2's only
    inpainting model, which A1111's v2-inpainting config describes)."""
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        try:
            text = yaml.read_text(errors="replace")
        except OSError:
            text = ""
        return FAMILIES["sd2v" if _V_PARAMETERIZATION.search(text) else "sd2"]
    if inpainting:
        return FAMILIES["sd2"]
    log.info("%s: Stable Diffusion 2.x without a %s beside it; assuming the 768-v model (SD 2.1 768). Put a "
             "yaml without `parameterization: \"v\"` there for a 512 epsilon model.", path.name, yaml.name)
    return FAMILIES["sd2v"]
