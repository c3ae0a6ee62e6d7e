"""Original-layout single files for every family: a diffusers folder written as one file and read back by
diffusers' own `from_single_file` (offline, with the folder as its config) gives every weight and every
pixel back. Tiny models with seeded random weights: they test the mechanics (key layouts, fused q/k/v,
transposes), never image quality."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command
from safetensors.torch import load_file

from generation.checkpoint_convert import diffusers_to_original_sd, save_single_file
from generation.checkpoint_convert_openclip import convert_open_clip, folder_family

from .torch_support import offline_hub, one_torch_thread  # noqa: F401  (autouse fixtures)

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_folder(tiny_model) -> Path:
    """The tiny SDXL: its two text encoders differ in width (32 and 40) as the real ones do (768 and
    1280); diffusers' `from_single_file` tells CLIP-L from OpenCLIP bigG by that width."""
    return tiny_model("sdxl")


@pytest.fixture
def model_folder(request, tiny_model):
    return request.param, tiny_model(request.param)


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _realign(pipe) -> None:
    """Copy every weight into fresh memory. A weight read from a memory-mapped safetensors file can sit
    at an address that is not 64-byte aligned, and the CPU's matmul then takes another vector path whose
    last bit differs (seen on SDXL's text projection: equal weights, pooled embeddings 4e-7 apart)."""
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        for parameter in module.parameters() if module is not None else ():
            parameter.data = parameter.data.clone()


def _render(pipe) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(3)
    return pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                generator=generator, output_type="np").images[0]


@pytest.mark.parametrize("model_folder", ["sd1", "sd2", "sd2v", "sdxl"], indirect=True)
def test_single_file_loads_back_with_every_weight_and_pixel_equal(model_folder, tmp_path):
    family, folder = model_folder
    path = save_single_file(folder, tmp_path / "model.safetensors")
    cls = _pipeline_class(family)
    original = cls.from_pretrained(folder, local_files_only=True)
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in COMPONENTS:
        if getattr(original, name, None) is None:
            continue
        want, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert got.keys() == want.keys(), name
        differ = [key for key in want if got[key].is_meta or not torch.equal(got[key], want[key])]
        assert differ == [], f"{name}: {differ[:5]}"
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
        _realign(pipe)
    assert np.array_equal(_render(loaded), _render(original))


@pytest.mark.parametrize("model_folder", ["sd2"], indirect=True)
def test_sd2_text_encoder_is_written_in_the_open_clip_layout(model_folder):
    _, folder = model_folder
    state = diffusers_to_original_sd(folder)
    prefix = "cond_stage_model.model."
    assert not any(key.startswith("cond_stage_model.transformer.") for key in state)
    assert state[prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 32, 32)
    assert state[prefix + "transformer.resblocks.1.attn.in_proj_bias"].shape == (3 * 32,)
    assert prefix + "positional_embedding" in state and prefix + "ln_final.weight" in state
    assert not any("q_proj" in key or "self_attn" in key or "layer_norm" in key for key in state)


def test_sdxl_is_written_in_the_sgm_layout(sdxl_folder):
    state = diffusers_to_original_sd(sdxl_folder, half=True)
    assert {key.split(".")[0] for key in state} == {"model", "first_stage_model", "conditioner"}
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in state
    # OpenCLIP stores the projection as `x @ text_projection`: [hidden, projection_dim].
    assert state["conditioner.embedders.1.model.text_projection"].shape == (40, 32)
    assert state["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (120, 40)
    assert "model.diffusion_model.label_emb.0.0.weight" in state and "model.diffusion_model.label_emb.0.2.bias" in state
    # transformer_layers_per_block 2 in the second block: two transformer blocks in one SpatialTransformer.
    assert any(".transformer_blocks.1." in key for key in state if key.startswith("model.diffusion_model.input_blocks."))
    assert all(tensor.dtype == torch.float16 for tensor in state.values() if tensor.is_floating_point())


def test_open_clip_conversion_is_the_inverse_of_diffusers_reader():
    """The fused q/k/v and the transposed projection come back exactly through diffusers' own reader."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=24, intermediate_size=30, num_attention_heads=2,
                                                       num_hidden_layers=3, projection_dim=16, vocab_size=100,
                                                       max_position_embeddings=12, hidden_act="gelu"))
    prefix = "conditioner.embedders.1.model."
    flat = {prefix + key: value for key, value in convert_open_clip(model.state_dict()).items()}
    back = convert_open_clip_checkpoint(model, flat, prefix=prefix)
    want = {key: value for key, value in model.state_dict().items() if not key.endswith("position_ids")}
    assert back.keys() == want.keys()
    assert all(torch.equal(back[key], want[key]) for key in want)


def test_open_clip_conversion_names_a_key_it_cannot_place():
    with pytest.raises(ValueError, match="encoder.layers.0.adapter.weight"):
        convert_open_clip({"text_model.encoder.layers.0.adapter.weight": torch.zeros(1)})


@pytest.mark.parametrize("family", ["sd1", "sd2v"])
def test_folder_family_reads_the_json_only(tiny_model, family):
    assert folder_family(tiny_model(family)) == family.removesuffix("v")


def test_folder_family_of_sdxl(sdxl_folder):
    assert folder_family(sdxl_folder) == "sdxl"


def test_other_architectures_are_refused_by_name(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline.*SD 1.x, 2.x and SDXL"):
        save_single_file(tmp_path, tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        folder_family(tmp_path / "missing")


def test_export_command_writes_an_sdxl_file(sdxl_folder, tmp_path):
    out = tmp_path / "xl.safetensors"
    call_command("export_single_file", str(out), "--model", str(sdxl_folder), "--half")
    written = load_file(str(out))
    assert "conditioner.embedders.1.model.text_projection" in written
    assert written["model.diffusion_model.out.2.weight"].dtype == torch.float16
