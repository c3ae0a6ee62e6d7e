"""Model families read from the files: diffusers folders (model_index.json and configs), single files
(safetensors headers, .ckpt pickles walked without unpickling), unsupported kinds named, damaged files
explained, and the form's defaults per family. The tiny models have random weights: they test the
mechanics (structure, layout), never image quality."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from generation.checkpoint_convert import save_single_file
from generation.checkpoint_keys import UNET_CONV_IN, read_file_keys
from generation.errors import GenerationError
from generation.families import FAMILIES, UnsupportedModel, detect_family
from generation.modelinfo import describe_model

from .torch_support import one_torch_thread  # noqa: F401  (autouse fixtures)

ROOT = Path(__file__).resolve().parent.parent
FAMILY_KEYS = ("sd1", "sd2", "sd2v", "sdxl")


@pytest.fixture(scope="module")
def single_files(tiny_model, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Each tiny family exported as an original-layout .safetensors and .ckpt (as other tools write them)."""
    folder = tmp_path_factory.mktemp("single")
    return {(family, suffix): save_single_file(tiny_model(family), folder / f"{family}{suffix}")
            for family in FAMILY_KEYS for suffix in (".safetensors", ".ckpt")}


def fake_file(path: Path, keys: dict[str, tuple[int, ...]] | list[str]) -> Path:
    """A small safetensors file with these tensor names (and shapes): enough for detection."""
    shapes = keys if isinstance(keys, dict) else {key: (1,) for key in keys}
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path))
    return path


# --- folders -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_KEYS)
def test_each_tiny_folder_is_detected_by_its_structure(tiny_model, family):
    assert detect_family(str(tiny_model(family))).key == family


@pytest.mark.parametrize(("folder", "family"), [("sd15_config", "sd1"), ("sd2_config", "sd2"), ("sd2v_config", "sd2v"),
                                                ("sdxl_config", "sdxl"), ("demo_model", "sd1")])
def test_shipped_folders_are_their_family(folder, family):
    assert detect_family(str(ROOT / "generation" / folder)).key == family
    assert FAMILIES[family].config_dir.is_dir()


@pytest.mark.parametrize(("class_name", "named"), [
    ("FluxPipeline", "a FLUX model"), ("StableDiffusion3Pipeline", "Stable Diffusion 3"),
    ("StableDiffusionXLImg2ImgPipeline", "an SDXL refiner"), ("PixArtSigmaPipeline", "PixArt"),
    ("StableCascadeCombinedPipeline", "Stable Cascade"), ("SomethingNewPipeline", "a SomethingNewPipeline model"),
])
def test_other_pipelines_are_named_with_what_is_supported(tmp_path, class_name, named):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(UnsupportedModel) as excinfo:
        detect_family(str(tmp_path))
    message = str(excinfo.value)
    assert named in message and "Supported: Stable Diffusion 1.x, Stable Diffusion 2.x (512 and 768-v) and SDXL" in message


@pytest.mark.parametrize(("family", "class_name"), [("sd1", None), ("sd1", "StableDiffusionInpaintPipeline"),
                                                    ("sd2", "StableDiffusionInpaintPipeline"),
                                                    ("sdxl", "StableDiffusionXLInpaintPipeline")])
def test_an_inpainting_folder_is_its_family_marked_inpainting(tiny_model, tmp_path, family, class_name):
    """A 9-channel UNet decides, whichever pipeline class the folder names (runwayml's says
    StableDiffusionInpaintPipeline; a merge saved by a script may say StableDiffusionPipeline)."""
    folder = tmp_path / "inpaint"
    shutil.copytree(tiny_model(family), folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(config | {"in_channels": 9}))
    if class_name:
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": class_name}))
    found = detect_family(str(folder))
    assert (found.key, found.inpainting) == (family, True)
    assert found.pipeline_class == (class_name or "StableDiffusionInpaintPipeline")
    assert found.label == f"{FAMILIES[family].label}, inpainting model"
    info = describe_model(str(folder))
    assert (info.family, info.inpainting, info.problem, info.width) == (family, True, None, 64)
    assert found.config_dir == FAMILIES[family].config_dir and not FAMILIES[family].inpainting


def test_a_folder_whose_unet_takes_other_inputs_is_named(tiny_model, tmp_path):
    folder = tmp_path / "pix2pix"
    shutil.copytree(tiny_model("sd1"), folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(config | {"in_channels": 8}))
    with pytest.raises(UnsupportedModel, match="pix2pix is an InstructPix2Pix model"):
        detect_family(str(folder))


def test_a_folder_without_model_index_is_a_readable_error(tmp_path):
    with pytest.raises(GenerationError, match="not a diffusers model folder"):
        detect_family(str(tmp_path))


def test_hub_ids_are_sd1():
    assert detect_family("runwayml/stable-diffusion-v1-5").key == "sd1"


# --- single files ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_files_are_detected_by_their_keys(single_files, family, suffix):
    assert detect_family(str(single_files[family, suffix])).key == family


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd2_single_files_follow_the_yaml_beside_them(single_files, tmp_path, suffix):
    path = shutil.copyfile(single_files["sd2", suffix], tmp_path / f"model{suffix}")
    assert detect_family(str(path)).key == "sd2v"  # no yaml: SD 2.1 768-v, the common one
    yaml = tmp_path / "model.yaml"
    yaml.write_text("model:\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n")
    assert detect_family(str(path)).key == "sd2v"
    yaml.write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert detect_family(str(path)).key == "sd2"


def test_ckpt_keys_are_read_without_unpickling(single_files):
    found = read_file_keys(single_files["sd1", ".ckpt"])
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in found.keys
    assert found.shapes[UNET_CONV_IN][:2] == (32, 4) and found.precision == "float32"


def test_legacy_format_ckpt_is_scanned_too(single_files, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": load_file(str(single_files["sdxl", ".safetensors"]))}, path, _use_new_zipfile_serialization=False)
    assert detect_family(str(path)).key == "sdxl"


@pytest.mark.parametrize(("keys", "named"), [
    (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"], "Stable Diffusion 3"),
    (["double_blocks.0.img_attn.norm.key_norm.scale"], "a FLUX model"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "a LoRA"),
    (["unet.down_blocks.0.attentions.0.to_q.lora_A.weight"], "a LoRA"),
    (["conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
      "model.diffusion_model.input_blocks.0.0.weight"], "an SDXL refiner"),
    (["clip_txt_mapper.weight"], "Stable Cascade"),
    (["y_embedder.y_embedding", "t_block.1.weight"], "PixArt"),
    (["emb_params"], "a textual-inversion embedding"),
    (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "a VAE alone"),
    (["model.diffusion_model.input_blocks.0.0.weight"], "a UNet alone"),
    (["control_model.input_hint_block.0.weight"], "a ControlNet"),
    (["edm_mean", "conditioner.embedders.1.model.positional_embedding"], "Playground v2.5"),
    (["something.else"], "not a Stable Diffusion checkpoint imagesite recognises"),
])
def test_unsupported_single_files_are_named(tmp_path, keys, named):
    with pytest.raises(UnsupportedModel) as excinfo:
        detect_family(str(fake_file(tmp_path / "model.safetensors", keys)))
    assert named in str(excinfo.value) and "model.safetensors is" in str(excinfo.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize(("encoder_key", "family"), [
    ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd1"),
    ("cond_stage_model.model.ln_final.weight", "sd2"),  # SD 2's inpainting model is 512 epsilon: no yaml needed
    ("conditioner.embedders.1.model.ln_final.weight", "sdxl"),
])
def test_an_inpainting_checkpoint_is_detected_by_its_unets_input_channels(tmp_path, suffix, encoder_key, family):
    state = {UNET_CONV_IN: torch.zeros(8, 9, 3, 3), encoder_key: torch.zeros(4)}
    path = tmp_path / f"inpainting{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    found = detect_family(str(path))
    assert (found.key, found.inpainting) == (family, True) and found.pipeline_class.endswith("InpaintPipeline")
    assert describe_model(str(path)).family_label == f"{FAMILIES[family].label}, inpainting model"


@pytest.mark.parametrize(("channels", "named"), [(8, "an InstructPix2Pix model"), (5, "a depth-to-image model"),
                                                 (7, "the Stable Diffusion x4 upscaler")])
def test_a_checkpoint_whose_unet_takes_other_inputs_is_named(tmp_path, channels, named):
    state = {UNET_CONV_IN: torch.zeros(8, channels, 3, 3), "cond_stage_model.model.ln_final.weight": torch.zeros(4)}
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    with pytest.raises(UnsupportedModel, match=named):
        detect_family(str(path))


# --- damaged files -----------------------------------------------------------------------------
def test_a_truncated_safetensors_is_a_readable_error(single_files, tmp_path):
    data = single_files["sd1", ".safetensors"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GenerationError, match=r"cut.safetensors is damaged .*MiB of tensor data are missing.*download"):
        detect_family(str(path))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("noise.safetensors", b"\x00" * 4, "shorter than a safetensors header"),
    ("noise.safetensors", struct.pack("<Q", 10**12) + b"{}", "header length is impossible"),
    ("text.safetensors", struct.pack("<Q", 5) + b"hello", "header is not JSON"),
    ("noise.ckpt", b"hello world", "is not a torch checkpoint"),
])
def test_unknown_bytes_are_a_readable_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GenerationError, match=message):
        detect_family(str(path))


def test_a_truncated_ckpt_is_a_readable_error(single_files, tmp_path):
    data = single_files["sd1", ".ckpt"].read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GenerationError, match="cut.ckpt is damaged .*zip archive is broken"):
        detect_family(str(path))


# --- what the web shows ------------------------------------------------------------------------
@pytest.mark.parametrize(("folder", "family", "size", "steps", "guidance"), [
    ("sd15_config", "sd1", 512, 25, 7.5), ("sd2_config", "sd2", 512, 25, 7.5),
    ("sd2v_config", "sd2v", 768, 25, 7.5), ("sdxl_config", "sdxl", 1024, 30, 6.0),
])
def test_defaults_limits_and_presets_follow_the_family(folder, family, size, steps, guidance):
    info = describe_model(str(ROOT / "generation" / folder))
    assert (info.family, info.width, info.height, info.steps, info.guidance_scale) == (family, size, size, steps, guidance)
    assert (info.min_size, info.max_size) == (size // 2, size * 2)
    assert info.family_label == FAMILIES[family].label and info.problem is None
    assert info.aspect_presets[0] == (size, size) and all(w % 8 == 0 and h % 8 == 0 for w, h in info.aspect_presets)
    if family == "sdxl":
        assert {(1216, 832), (832, 1216), (1344, 768), (1536, 640)} <= set(info.aspect_presets)


def test_a_tiny_models_presets_are_scaled_to_its_native_size(tiny_model):
    info = describe_model(str(tiny_model("sdxl")))
    assert info.family == "sdxl" and info.width == 64 and info.family_label == "SDXL"
    assert info.aspect_presets[:3] == ((64, 64), (72, 56), (56, 72))


def test_describe_model_reports_a_problem_instead_of_raising(tmp_path):
    path = fake_file(tmp_path / "flux1-dev.safetensors", ["double_blocks.0.img_attn.norm.key_norm.scale"])
    info = describe_model(str(path))
    assert info.problem.startswith("flux1-dev.safetensors is a FLUX model")


def test_single_file_defaults_follow_its_family(single_files):
    info = describe_model(str(single_files["sdxl", ".safetensors"]))
    assert (info.family, info.width, info.steps) == ("sdxl", 1024, 30)


# --- the shipped configs hold the real architectures (meta device: no memory) ------------------
def _millions(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)


@pytest.mark.parametrize(("family", "expected"), [("sd2", [865.9, 340.4]), ("sd2v", [865.9, 340.4]),
                                                  ("sdxl", [2567.5, 123.1, 694.7])])
def test_shipped_configs_build_the_real_sizes(family, expected):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config = FAMILIES[family].config_dir
    with init_empty_weights():
        models = [UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config, subfolder="unet")),
                  CLIPTextModel(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder"))]
        if family == "sdxl":
            models.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config, subfolder="text_encoder_2")))
    assert [_millions(model) for model in models] == expected
    padded = "tokenizer_2" if family == "sdxl" else "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(config, subfolder=padded)
    assert tokenizer("a photo of a cat", padding="max_length", max_length=9).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0]
    scheduler = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == FAMILIES[family].prediction_type
