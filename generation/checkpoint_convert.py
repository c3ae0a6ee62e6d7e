"""Diffusers Stable Diffusion 1.x, 2.x and SDXL → one original-layout (CompVis/LDM, SGM) checkpoint file.

Other tools (AUTOMATIC1111, ComfyUI, the original scripts) read these models as a single `.safetensors`
or `.ckpt`. Every family keeps the UNet under `model.diffusion_model.*` and the VAE under
`first_stage_model.*`; the text encoders differ:

| family | text encoder(s) in the file |
|---|---|
| SD 1.x | `cond_stage_model.transformer.text_model.*` (OpenAI CLIP, transformers layout) |
| SD 2.x | `cond_stage_model.model.*` (OpenCLIP layout: fused `in_proj` q/k/v, `resblocks`) |
| SDXL | `conditioner.embedders.0.transformer.text_model.*` (CLIP-L) and `conditioner.embedders.1.model.*` (OpenCLIP bigG, with `text_projection`) |

SDXL's UNet adds `label_emb.0.*` (the size/pooled-text embedding). The mapping is the inverse of what
`diffusers`' `from_single_file` does (`loaders/single_file_utils.py`); it is derived from the configs
rather than hard-coded for one model size, so tiny test models convert too. No Django here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint_convert_openclip import convert_open_clip, family_of_components, folder_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
# Where each family keeps its text encoder(s), and how each is written (see the module docstring).
TEXT_SECTIONS = {
    "sd1": (("text_encoder", "cond_stage_model.transformer.", "clip"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "open_clip"),),
    "sdxl": (
        ("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
        ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip"),
    ),
}

# Inside a ResNet block, diffusers names → LDM names (the UNet's ResBlock is a Sequential).
_UNET_RESNET_PARTS = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
# The VAE's mid-block attention: diffusers' Linear layers are 1×1 convolutions in the LDM layout.
_VAE_ATTENTION_PARTS = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def unet_block_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """Diffusers module prefix → LDM prefix for a UNet2DConditionModel config of SD 1.x, 2.x or SDXL.

    LDM numbers the UNet as flat lists: `input_blocks` hold conv_in, then each down block's
    `layers_per_block` (resnet, attention) pairs and its downsampler; `output_blocks` hold each up
    block's `layers_per_block + 1` (resnet, attention[, upsampler]) entries."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("Only UNets with one layers_per_block for every block can be exported.")
    if config.get("addition_embed_type") not in (None, "text_time") or config.get("class_embed_type") or config.get("num_class_embeds"):
        raise ValueError("This UNet has extra embeddings (an upscaler?); only Stable Diffusion 1.x, 2.x and SDXL can be exported.")
    blocks = len(config["block_out_channels"])
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
        # SDXL: pooled text + size ids → the LDM "label" embedding (an MLP like the time embedding).
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
    }
    for i in range(blocks):
        for j in range(layers):
            index = 1 + i * (layers + 1) + j
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        if i < blocks - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (layers + 1)}.0.op."
            # The upsampler follows the attention when the block has one.
            slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (layers + 1) + layers}.{slot}."
    return prefixes


def convert_unet(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict → LDM keys (without the `model.diffusion_model.` prefix)."""
    prefixes = unet_block_prefixes(config)
    longest_first = sorted(prefixes, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".base_layer." in key or ".lora_" in key:
            raise ValueError("The UNet has LoRA layers attached; fuse or unload them before exporting.")
        head = next((p for p in longest_first if key.startswith(p)), None)
        if head is None:
            raise ValueError(f"UNet key {key!r} has no place in the original Stable Diffusion layout.")
        rest = key[len(head):]
        if ".resnets." in head:
            rest = _replace_first(rest, _UNET_RESNET_PARTS)
        out[prefixes[head] + rest] = tensor
    return out


def convert_vae(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict → LDM keys (without `first_stage_model.`); the decoder's up blocks
    are numbered in reverse in LDM, and the mid-block attention projections become 1×1 convs."""
    last = len(config["block_out_channels"]) - 1
    rules = (
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{last - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{last - int(m[1])}.upsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
    )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = key
        for regex, replace in rules:
            new, count = re.subn(regex, replace, key)
            if count:
                break
        if ".mid.attn_1." in new:
            head, rest = new.split(".mid.attn_1.")
            new = f"{head}.mid.attn_1." + _replace_first(rest, _VAE_ATTENTION_PARTS)
            if tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        elif ".block." in new or ".block_" in new:
            new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[new] = tensor
    return out


def convert_text_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict → keys under `text_model.` (transformers 5 dropped that prefix;
    transformers 4 keys already have it). The `position_ids` buffer is not a weight: left out."""
    return {
        ("" if key.startswith("text_model.") else "text_model.") + key: tensor
        for key, tensor in state.items()
        if not key.endswith("position_ids")
    }


def _replace_first(rest: str, parts: tuple[tuple[str, str], ...]) -> str:
    for old, new in parts:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _components(pipe_or_folder: Any, finetune: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"unet", "vae", "text_encoder"[, "text_encoder_2"]} from a loaded pipeline or a local diffusers
    folder (CPU, no hub); an SDXL pipeline or folder has the second text encoder.

    `finetune` is a full DreamBooth fine-tune's folder: its `unet/` (and text encoder folders, when it
    trained them) replace the base model's."""
    if not isinstance(pipe_or_folder, (str, os.PathLike)):
        if finetune is not None:
            raise ValueError("Apply a fine-tune to a model folder, not to a loaded pipeline.")
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        return {name: getattr(pipe_or_folder, name) for name in names if getattr(pipe_or_folder, name, None) is not None}
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(pipe_or_folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers model folder (no model_index.json).")

    def source(name: str) -> Path:
        tuned = Path(finetune) / name if finetune is not None else None
        return tuned if tuned is not None and (tuned / "config.json").is_file() else folder / name

    if finetune is not None and not (Path(finetune) / "unet" / "config.json").is_file():
        raise ValueError(f"{finetune} is not a full fine-tune (no unet/ with a config.json).")
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    if folder_family(folder) == "sdxl":
        classes["text_encoder_2"] = CLIPTextModelWithProjection
    # The VAE is never trained, so it always comes from the base folder.
    return {
        name: cls.from_pretrained(folder / name if name == "vae" else source(name), local_files_only=True)
        for name, cls in classes.items()
    }


def diffusers_to_original_sd(
    pipe_or_folder: Any, *, half: bool = False, finetune: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """One flat state dict in the original single-file layout of the model's family (SD 1.x, 2.x, SDXL).

    `pipe_or_folder` is a loaded `StableDiffusionPipeline`/`StableDiffusionXLPipeline` (any device;
    tensors come back on the CPU) or the path of a diffusers folder. `half` casts floating-point weights
    to float16 (half the size; what most shared files use); `finetune` as in `_components`. Raises
    ValueError for other architectures and for pipelines with LoRA layers attached (fuse or unload
    them first)."""
    parts = _components(pipe_or_folder, finetune)
    family = family_of_components(parts)
    unet, vae = parts["unet"], parts["vae"]
    sections = [
        (UNET_PREFIX, convert_unet(unet.state_dict(), dict(unet.config))),
        (VAE_PREFIX, convert_vae(vae.state_dict(), dict(vae.config))),
    ]
    for name, prefix, layout in TEXT_SECTIONS[family]:
        state = parts[name].state_dict()
        sections.append((prefix, convert_text_encoder(state) if layout == "clip" else convert_open_clip(state)))
    result: dict[str, torch.Tensor] = {}
    for prefix, state in sections:
        for key, tensor in state.items():
            tensor = tensor.detach().to("cpu")
            if half and tensor.is_floating_point():
                tensor = tensor.half()
            result[prefix + key] = tensor.contiguous()
    return result


def save_single_file(
    pipe_or_folder: Any, path: str | os.PathLike, *, half: bool = False, finetune: str | os.PathLike | None = None
) -> Path:
    """Write the model as one original-layout file of its family (read from the folder or pipeline):
    `.safetensors` (recommended: loading it runs no code) or `.ckpt` (`torch.save({"state_dict": ...})`,
    as the LDM scripts wrote)."""
    _check_suffix(path)
    return write_state_dict(diffusers_to_original_sd(pipe_or_folder, half=half, finetune=finetune), path)


def write_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write flat tensors as `.safetensors` or a `.ckpt`. The file is written beside its target and
    renamed into place, so a failed export leaves no half-written model behind."""
    path = Path(path)
    suffix = _check_suffix(path)
    partial = path.with_name(path.name + ".partial")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(partial), metadata={"format": "pt"})
        else:
            torch.save({"state_dict": state}, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _check_suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"Unknown single-file format {Path(path).suffix!r}; use .safetensors or .ckpt.")
    return suffix
