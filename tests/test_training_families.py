"""Subject training on every supported family (SD 1.x, SD 2.x 768-v, SDXL) and the memory plan.

The models are tests/tiny_models.py's tiny random pipelines (the `tiny_model` fixture): random
weights test the mechanics only (the conditioning each family's UNet takes, the target, the files
and that they load back), never the quality of what is learnt. There is no GPU here: the tests that
need one patch what cannot exist (torch.cuda.OutOfMemoryError raised at a step, mem_get_info) and
say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training.checkpoint_names import LORA_WEIGHT_NAME
from training.dreambooth import loop
from training.dreambooth.data import size_conditions
from training.dreambooth.devices import default_options_for
from training.dreambooth.options import check_options, method_defaults
from training.dreambooth.progress import TrainingError, TrainingProgress
from training.dreambooth.sampling import ClassImagePlan, _class_image_plan, _rendering_on

from .torch_support import one_torch_thread  # noqa: F401  (autouse fixture)


def _photo(background: str, size: tuple[int, int] = (64, 64)) -> Image.Image:
    img = Image.new("RGB", size, background)
    ImageDraw.Draw(img).rectangle([16, 16, 47, 47], fill="yellow")
    return img


PHOTOS = [_photo("red"), _photo("blue", (96, 64))]  # the second is cropped: its time ids say where
CAPTIONS = ["a sks square on a red background", "a sks square on a blue background"]


def _quick(model: Path, **overrides: object):
    """Two steps of the model's own defaults, small enough for a unit test."""
    base = dict(steps=2, learning_rate=1e-2, num_class_images=2, class_inference_steps=2, cpu_threads=1)
    return default_options_for(model, **{**base, **overrides})


def _train(model: Path, out: Path, options, **kwargs):
    return loop.train_dreambooth(
        base_model=model, instance_images=PHOTOS, instance_prompts=CAPTIONS, token="sks", class_noun="square",
        options=options, output_dir=out, **kwargs,
    )


def _render(pipe) -> np.ndarray:
    return pipe("a sks square", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(3),
                height=64, width=64, output_type="np").images[0]


def _loads_back_and_changes_the_output(model: Path, lora: Path, pipeline_class: type) -> None:
    pipe = pipeline_class.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base = _render(pipe)
    pipe.load_lora_weights(str(lora), adapter_name="subject")
    with_lora = _render(pipe)
    pipe.unload_lora_weights()
    assert np.abs(with_lora - base).max() > 1e-4
    assert np.array_equal(_render(pipe), base)


def test_sdxl_trains_on_both_encoders_states_pooled_text_and_size_ids(tiny_model, tmp_path: Path, monkeypatch) -> None:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    model = tiny_model("sdxl")
    seen: list[dict] = []  # what the UNet is given at each training forward (a spy around the real call)
    real = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        if self.training:
            seen.append({"states": tuple(encoder_hidden_states.shape), **{k: v.clone() for k, v in (kwargs.get("added_cond_kwargs") or {}).items()}})
        return real(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    reports: list[TrainingProgress] = []
    options = _quick(model, validation_every=2, validation_prompts=("a sks square",))
    assert options.family == "sdxl" and not options.train_text_encoder and options.prior_preservation
    result = _train(model, tmp_path / "out", options, progress=reports.append, class_images_dir=tmp_path / "class")

    assert result.class_images_generated == 2 and [r.step for r in reports if r.phase == "training"] == [1, 2]
    assert reports[-1].validation_images and reports[-1].validation_images[0].size == (64, 64)
    first = seen[0]  # batch: one photo + one class image (prior preservation)
    assert first["states"] == (2, 77, 72)  # both encoders' penultimate states side by side (32 + 40 wide)
    assert first["text_embeds"].shape == (2, 32)  # the second encoder's pooled projection
    assert first["time_ids"].shape == (2, 6)
    assert {tuple(r.tolist()) for r in first["time_ids"][:1]} <= {(64, 64, 0, 0, 64, 64), (64, 96, 0, 16, 64, 64)}
    assert first["time_ids"][1].tolist() == [64, 64, 0, 0, 64, 64]  # a class image, drawn at 64 px
    assert result.checkpoint_path == tmp_path / "out" / LORA_WEIGHT_NAME
    _loads_back_and_changes_the_output(model, result.checkpoint_path, StableDiffusionXLPipeline)


def test_sd2_v_model_trains_on_the_velocity_and_its_lora_loads(tiny_model, tmp_path: Path, monkeypatch) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    model = tiny_model("sd2v")
    calls: list[int] = []
    real = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: calls.append(1) or real(self, *a))
    options = _quick(model, train_token_embedding=False)
    assert options.family == "sd2"
    result = _train(model, tmp_path / "out", options, class_images_dir=tmp_path / "class")
    assert calls == [1, 1] and result.class_images_generated == 2
    _loads_back_and_changes_the_output(model, result.checkpoint_path, StableDiffusionPipeline)


def test_sdxl_pivotal_tuning_learns_the_tokens_rows_in_both_encoders(tiny_model, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from generation.lora_files import read_lora_file

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model("sdxl"), local_files_only=True)
    before = [e.get_input_embeddings().weight.detach().clone() for e in (pipe.text_encoder, pipe.text_encoder_2)]
    options = _quick(tiny_model("sdxl"), prior_preservation=False, train_token_embedding=True, token_learning_rate=1e-2)
    result = _train(pipe, tmp_path / "out", options)
    sks = pipe.tokenizer("sks", add_special_tokens=False).input_ids
    for encoder, start in zip((pipe.text_encoder, pipe.text_encoder_2), before):
        changed = torch.nonzero((encoder.get_input_embeddings().weight.detach() != start).any(dim=1)).flatten().tolist()
        assert changed == sks  # only the token's rows moved, in each encoder
    lora = read_lora_file(result.checkpoint_path)
    assert set(lora.bundled["sks"]) == {"clip_l", "clip_g"}  # A1111's SDXL bundle: both encoders' rows
    assert torch.equal(lora.token_rows(pipe.tokenizer_2, encoder=2)["embeddings"], pipe.text_encoder_2.get_input_embeddings().weight[sks].detach())


def test_size_conditions_say_where_each_photo_was_cropped() -> None:
    ids = size_conditions([_photo("red", (96, 64)), _photo("red", (64, 128))], 64)
    # (original h, w, crop top, left, target h, w): the wide photo loses 16 px each side, the tall 32 top and bottom
    assert ids.tolist() == [[64, 96, 0, 16, 64, 64], [128, 64, 32, 0, 64, 64]]


def test_sdxl_defaults_follow_its_anchors(tiny_model) -> None:
    options = method_defaults(tiny_model("sdxl"))
    assert (options.family, options.method, options.lora_rank, options.learning_rate, options.steps, options.batch_size) == (
        "sdxl", "lora", 16, 1e-4, 500, 1)
    assert options.lora_target_modules == ("to_q", "to_k", "to_v", "to_out.0") and not options.lora_blocks
    assert not options.train_text_encoder and not options.train_token_embedding and options.lr_schedule == "constant"
    assert options.resolution == 64  # the model's native size (1024 on a real SDXL)
    check_options(options)
    with pytest.raises(ValueError, match="full fine-tune of SDXL"):
        check_options(method_defaults(tiny_model("sdxl"), method="full", train_text_encoder=True))
    assert method_defaults(tiny_model("sd2v")).family == "sd2" and method_defaults(tiny_model("sd1")).family == "sd1"


def test_out_of_memory_retries_once_with_lower_memory_settings(tiny_model, tmp_path: Path, monkeypatch, caplog) -> None:
    # No GPU here: the first training step raises the error a GPU would (torch.cuda.OutOfMemoryError).
    real = loop._dreambooth_loss
    raised: list[int] = []

    def loss_once_out_of_memory(*args, **kwargs):
        if not raised:
            raised.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_dreambooth_loss", loss_once_out_of_memory)
    reports: list[TrainingProgress] = []
    options = _quick(tiny_model("sd1"), prior_preservation=False, batch_size=2, train_token_embedding=False)
    assert not options.gradient_checkpointing and options.mixed_precision == "no"
    with caplog.at_level(logging.WARNING, logger="training.dreambooth.loop"):
        result = _train(tiny_model("sd1"), tmp_path / "out", options, progress=reports.append)
    assert raised == [1] and result.checkpoint_path.exists()
    assert result.options.gradient_checkpointing and result.options.batch_size == 1 and result.options.mixed_precision == "fp16"
    said = [r.message for r in reports if r.message]
    assert said and "out of memory" in said[0] and "gradient checkpointing" in said[0] and "batch size 1" in said[0]
    assert "retrying with gradient checkpointing" in caplog.text


def test_a_second_out_of_memory_fails_naming_the_knobs(tiny_model, tmp_path: Path, monkeypatch) -> None:
    # No GPU here: every training step raises the error a GPU would.
    def always_out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop, "_dreambooth_loss", always_out_of_memory)
    options = _quick(tiny_model("sd1"), prior_preservation=False, lora_rank=8, train_token_embedding=False, steps=1)
    with pytest.raises(TrainingError, match="even after starting again with gradient checkpointing") as failed:
        _train(tiny_model("sd1"), tmp_path / "out", options)
    assert "lora_rank" in str(failed.value) and not (tmp_path / "out").exists()


def test_class_image_plan_follows_the_free_gpu_memory(monkeypatch) -> None:
    # No GPU here: mem_get_info answers as a card's would (free, total bytes).
    gib = 1024**3
    cuda, half = torch.device("cuda"), torch.float16
    sd15, sdxl = int(2.0 * gib), int(6.5 * gib)  # the pipelines' weights in fp16

    def card(free: float, total: float) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free * gib), int(total * gib)))

    card(5.3, 6)  # SD 1.5 on a 6 GB card: one at a time, all on the GPU (2.6 GiB measured on a GPU)
    assert _class_image_plan(cuda, half, 512, False, sd15) == ClassImagePlan(half, 1)
    card(22, 24)
    assert _class_image_plan(cuda, half, 512, False, sd15) == ClassImagePlan(half, 4)
    assert _class_image_plan(cuda, half, 1024, False, sdxl) == ClassImagePlan(half, 4)  # 10.6 GiB measured
    card(15.3, 16)
    assert _class_image_plan(cuda, half, 1024, False, sdxl) == ClassImagePlan(half, 4)
    card(11.3, 12)  # SDXL on a 12 GB card: one model on the GPU at a time (5.4 GiB measured)
    assert _class_image_plan(cuda, half, 1024, False, sdxl) == ClassImagePlan(half, 1, vae_tiling=True, offload=True)
    card(60, 80)  # the out-of-memory retry takes the lowest plan whatever the card says
    assert _class_image_plan(cuda, half, 512, True, sd15) == ClassImagePlan(half, 1, vae_tiling=True, offload=True)
    assert _class_image_plan(torch.device("cpu"), half, 512, False, sd15) == ClassImagePlan(torch.float32, 4)  # as ever


def test_class_images_render_in_half_precision_and_the_weights_come_back_exactly(tiny_model) -> None:
    # The GPU plan's precision detour, on the CPU (no GPU here): the models are fp16 inside, and
    # afterwards hold their own float32 weights again, bit for bit, with no memory feature left on.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model("sd1"), local_files_only=True)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plan = ClassImagePlan(torch.float16, 1, vae_tiling=True)
    with _rendering_on(pipe, torch.device("cpu"), plan):
        assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16
        assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert pipe.unet.dtype == torch.float32 and not pipe.vae.use_slicing and not pipe.vae.use_tiling
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_a_single_file_is_converted_once_with_progress_and_trained(tiny_model, tmp_path: Path, settings) -> None:
    pytest.importorskip("generation.model_cache")  # generation's conversion cache (issue 15)
    from generation.checkpoint_convert import save_single_file

    folder = tiny_model("sd1")
    single = save_single_file(folder, tmp_path / "tiny.safetensors")
    settings.IMAGESITE_MODEL_CONFIG = str(folder)  # the tiny model's own configs, as an operator would point them
    settings.IMAGESITE_MODEL_CACHE = str(tmp_path / "cache")
    options = _quick(folder, prior_preservation=False, steps=1, train_token_embedding=False)
    reports: list[TrainingProgress] = []
    result = _train(single, tmp_path / "out", options, progress=reports.append)
    preparing = [r for r in reports if r.phase == "preparing_model"]
    assert preparing[0].step == 0 and preparing[-1].step == preparing[-1].total == 1
    assert any("Converting tiny.safetensors" in (r.message or "") for r in preparing)
    assert result.checkpoint_path.exists() and len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1

    again: list[TrainingProgress] = []  # the second run finds the folder: nothing is converted
    _train(single, tmp_path / "again", options, progress=again.append)
    assert not any("Converting" in (r.message or "") for r in again)
