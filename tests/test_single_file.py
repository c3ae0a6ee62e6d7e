"""Single checkpoint files: export the demo in the original SD layout, load it back through the
worker's real path offline (same pixels as the folder), read notebook .ckpt files without running
their pickles, readable errors, and the SD 1.5 configs checked on the meta device (no memory)."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from django.core.management import CommandError, call_command
from safetensors.torch import load_file

from generation.checkpoint_convert import (
    UNET_PREFIX,
    VAE_PREFIX,
    convert_text_encoder,
    convert_unet,
    convert_vae,
    diffusers_to_original_sd,
    save_single_file,
)
from generation.pipeline import GenerationError, Renderer, RenderSettings

from .torch_support import offline_hub, one_torch_thread  # noqa: F401  (autouse fixtures)

ROOT = Path(__file__).resolve().parent.parent
SD15_CONFIG = ROOT / "generation" / "sd15_config"
SETTINGS = RenderSettings(prompt="a red circle on a blue background", negative_prompt="", seed=5, steps=4,
                          guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m")
TRIPPED: list[str] = []


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A private copy of the demo model: its weights may be retrained while the tests run."""
    folder = tmp_path_factory.mktemp("demo") / "demo_model"
    shutil.copytree(settings.IMAGESITE_MODEL, folder)
    return folder


@pytest.fixture(scope="module")
def folder_pixels(demo) -> np.ndarray:
    return np.asarray(Renderer(str(demo), "cpu").render(SETTINGS)[0])


@pytest.fixture(scope="module")
def state(demo) -> dict[str, torch.Tensor]:
    return diffusers_to_original_sd(demo)


def render_file(path: Path, config: Path | str | None) -> np.ndarray:
    return np.asarray(Renderer(str(path), "cpu", single_file_config=str(config) if config else None).render(SETTINGS)[0])


# --- export and load back ----------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_renders_the_same_pixels_as_the_folder(demo, folder_pixels, tmp_path, suffix):
    path = save_single_file(demo, tmp_path / f"demo{suffix}")
    assert np.array_equal(render_file(path, demo), folder_pixels)


def test_export_uses_the_original_sd_layout(state):
    assert {key.split(".")[0] for key in state} == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert "model.diffusion_model.time_embed.0.weight" in state
    # transformers 5 keys lack `text_model.`; the original layout has it.
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in state
    # The VAE's mid-block attention projections are 1x1 convolutions in the original layout.
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert state["first_stage_model.encoder.mid.attn_1.proj_out.weight"].ndim == 4
    diffusers_names = ("resnets.", "attentions.", "down_blocks.", "up_blocks.", "mid_block.", "samplers.", "group_norm")
    assert [key for key in state if any(name in key for name in diffusers_names)] == []


def test_export_refuses_a_unet_with_lora_layers_attached(demo):
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(demo / "unet"))
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.base_layer.weight"
    with pytest.raises(ValueError, match="LoRA"):
        convert_unet({key: torch.zeros(1)}, config)


def test_export_writes_no_partial_file_on_a_bad_suffix(demo, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_single_file(demo, tmp_path / "demo.bin")
    assert list(tmp_path.iterdir()) == []


def test_export_command_writes_a_file_other_tools_read(demo, state, tmp_path):
    out = tmp_path / "demo.safetensors"
    call_command("export_single_file", str(out), "--model", str(demo))
    written = load_file(str(out))
    assert written.keys() == state.keys()
    assert all(torch.equal(written[key], state[key]) for key in state)


def test_export_command_applies_a_full_finetune_over_the_base(demo, state, tmp_path):
    from diffusers import UNet2DConditionModel

    finetune = tmp_path / "run-1"  # what a full DreamBooth run writes: only the trained parts
    tuned = UNet2DConditionModel.from_pretrained(demo / "unet")
    with torch.no_grad():
        tuned.conv_out.bias.add_(1.0)
    tuned.save_pretrained(finetune / "unet")
    out = tmp_path / "subject.safetensors"
    call_command("export_single_file", str(out), "--model", str(demo), "--finetune", str(finetune))
    written = load_file(str(out))
    bias = "model.diffusion_model.out.2.bias"
    assert torch.equal(written[bias], state[bias] + 1.0)
    assert torch.equal(written["first_stage_model.decoder.conv_out.weight"], state["first_stage_model.decoder.conv_out.weight"])


# --- notebook .ckpt files ----------------------------------------------------------------------
def _trip(note: str) -> None:
    TRIPPED.append(note)


class Tripwire:
    """Pickles as a call to `_trip`: a .ckpt whose loading runs code would record it."""

    def __reduce__(self):
        return (_trip, ("unpickling ran code from the checkpoint",))


class AttributeDict(dict):
    """Like pytorch_lightning's: hyper-parameters as a dict subclass, pickled as a class plus items."""


class CallsOs:
    """Pickles as a call into `os` (getcwd: harmless, but the kind of call a malicious file makes)."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_notebook_ckpt_with_pickled_objects_loads_without_running_them(demo, state, folder_pixels, tmp_path):
    path = tmp_path / "model_trained.ckpt"
    hyper = argparse.Namespace(learning_rate=5e-6, max_train_steps=800, instance_prompt="photo of sks dog")
    checkpoint = {"state_dict": state, "hyper_parameters": hyper, "hparams": AttributeDict(lr=5e-6, steps=800),
                  "callbacks": {Tripwire: {"best": Tripwire()}}, "global_step": 800}
    torch.save(checkpoint, path)
    assert np.array_equal(render_file(path, demo), folder_pixels)
    assert TRIPPED == []


def test_ckpt_calling_into_os_is_refused_readably(demo, state, tmp_path):
    path = tmp_path / "model_trained.ckpt"
    torch.save({"state_dict": state, "extra": CallsOs()}, path)
    with pytest.raises(GenerationError, match="refuses to load it"):
        Renderer(str(path), "cpu", single_file_config=str(demo))


def test_legacy_format_ckpt_with_pickled_objects_says_to_convert_it(demo, state, tmp_path):
    path = tmp_path / "old.ckpt"  # torch < 1.6 format: its pickled classes cannot be listed beforehand
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-6)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(GenerationError, match=r"export_single_file .*old\.safetensors --model .*old\.ckpt --trust-pickle"):
        Renderer(str(path), "cpu", single_file_config=str(demo))


def test_export_command_converts_an_unreadable_ckpt_only_when_trusted(state, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-6)}, ckpt, _use_new_zipfile_serialization=False)
    out = tmp_path / "old.safetensors"
    with pytest.raises(CommandError, match="--trust-pickle"):
        call_command("export_single_file", str(out), "--model", str(ckpt))
    assert not out.exists()
    call_command("export_single_file", str(out), "--model", str(ckpt), "--trust-pickle", "--half")
    written = load_file(str(out))
    assert written.keys() == state.keys() and all(t.dtype == torch.float16 for t in written.values() if t.is_floating_point())


def test_export_command_turns_a_ckpt_into_safetensors(state, tmp_path):
    ckpt = tmp_path / "model_trained.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1e-6), "callbacks": [Tripwire()]}, ckpt)
    out = tmp_path / "model_trained.safetensors"
    call_command("export_single_file", str(out), "--model", str(ckpt))
    written = load_file(str(out))
    assert written.keys() == state.keys() and TRIPPED == []


# --- configs -----------------------------------------------------------------------------------
def test_a_config_setting_that_is_no_config_folder_is_a_readable_error(demo, tmp_path):
    path = save_single_file(demo, tmp_path / "demo.safetensors")
    for config in (tmp_path / "missing", tmp_path):  # absent, a folder without model_index.json
        with pytest.raises(GenerationError, match="set IMAGESITE_MODEL_CONFIG"):
            Renderer(str(path), "cpu", single_file_config=str(config))


def test_without_a_config_setting_the_familys_shipped_configs_are_used(demo, tmp_path):
    # The demo is SD 1.x by its keys, but 64 px: SD 1.5's shipped configs don't fit it, readably.
    path = save_single_file(demo, tmp_path / "demo.safetensors")
    with pytest.raises(GenerationError, match=r"looks like Stable Diffusion 1\.x but does not match the architecture in .*sd15_config"):
        Renderer(str(path), "cpu", single_file_config=None)


def test_single_file_of_another_architecture_is_a_readable_error(demo, tmp_path):
    path = save_single_file(demo, tmp_path / "demo.safetensors")
    with pytest.raises(GenerationError, match="does not match the architecture in .*sd15_config"):
        Renderer(str(path), "cpu", single_file_config=str(SD15_CONFIG))


def _sd15_on_meta():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # shapes only: SD 1.5 would be ~4 GB in float32
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG, subfolder="text_encoder"))
    return unet, vae, text


def test_sd15_config_builds_sd15_sized_models():
    from diffusers import PNDMScheduler
    from transformers import CLIPTokenizer

    unet, vae, text = _sd15_on_meta()
    millions = [round(sum(p.numel() for p in model.parameters()) / 1e6, 1) for model in (unet, vae, text)]
    assert millions == [859.5, 83.7, 123.1]
    assert text.config.hidden_act == "quick_gelu" and text.config.max_position_embeddings == 77
    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIG, subfolder="tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids
    scheduler = PNDMScheduler.from_pretrained(SD15_CONFIG, subfolder="scheduler")
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.beta_schedule == "scaled_linear"


def test_sd15_export_layout_is_what_from_single_file_reads():
    """SD 1.5's own shapes (4 blocks, 2 layers each) through our export and diffusers' import, on meta."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    unet, vae, text = _sd15_on_meta()
    flat = {UNET_PREFIX + k: v for k, v in convert_unet(unet.state_dict(), dict(unet.config)).items()}
    flat |= {VAE_PREFIX + k: v for k, v in convert_vae(vae.state_dict(), dict(vae.config)).items()}
    flat |= {"cond_stage_model.transformer." + k: v for k, v in convert_text_encoder(text.state_dict()).items()}
    assert infer_diffusers_model_type(flat) == "v1"
    back_unet = convert_ldm_unet_checkpoint(flat, dict(unet.config))
    assert {k: v.shape for k, v in back_unet.items()} == {k: v.shape for k, v in unet.state_dict().items()}
    back_vae = convert_ldm_vae_checkpoint(flat, dict(vae.config))
    assert {k: v.shape for k, v in back_vae.items()} == {k: v.shape for k, v in vae.state_dict().items()}
