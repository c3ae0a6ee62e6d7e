"""The pipeline on the shipped demo model: determinism, seeds, memory profiles, OOM fallback, PNG chunk."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from PIL import Image

from generation.families import FAMILIES
from generation.memory import memory_need
from generation.pipeline import (
    GenerationError,
    Renderer,
    RenderSettings,
    a1111_parameters,
    encode_png,
    plan_memory,
    resolve_profile,
)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(settings.IMAGESITE_MODEL, "cpu")


def fast(**overrides) -> RenderSettings:
    values = dict(prompt="a red circle on a blue background", negative_prompt="", seed=11, steps=4,
                  guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m", num_images=1)
    values.update(overrides)
    return RenderSettings(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_seed_and_settings_give_identical_pixels(renderer):
    a = renderer.render(fast())[0]
    b = renderer.render(fast())[0]
    assert a.size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))


def test_different_seeds_differ(renderer):
    a = renderer.render(fast(seed=1))[0]
    b = renderer.render(fast(seed=2))[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1.0


def test_batch_images_use_consecutive_seeds(renderer):
    batch = renderer.render(fast(seed=20, num_images=2))
    alone = renderer.render(fast(seed=21))[0]
    assert len(batch) == 2
    # Image 1 of a batch is the seed+1 image (batched maths may differ in the last bits).
    assert np.abs(pixels(batch[1]) - pixels(alone)).max() <= 2


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler_a", "euler", "ddim", "pndm"])
def test_every_scheduler_runs_and_reports_each_step(renderer, scheduler):
    seen = []
    images = renderer.render(fast(scheduler=scheduler, steps=5), on_step=lambda step, total: seen.append((step, total)))
    assert images[0].size == (64, 64)
    assert seen[-1][0] == seen[-1][1] and [s for s, _ in seen] == list(range(1, len(seen) + 1))


def test_an_exception_in_the_progress_callback_stops_the_run(renderer):
    class Stop(Exception):
        pass

    def cancel_at_two(step, total):
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        renderer.render(fast(steps=10), on_step=cancel_at_two)
    # the pipeline is still usable afterwards
    assert renderer.render(fast())[0].size == (64, 64)


def test_other_sizes_within_limits(renderer):
    assert renderer.render(fast(width=96, height=48))[0].size == (96, 48)


def test_auto_picks_the_profile_by_the_models_need():
    sd1 = memory_need("hub/id", FAMILIES["sd1"])
    sdxl = memory_need("hub/id", FAMILIES["sdxl"])
    assert resolve_profile("auto", cuda_available=False, need=sdxl) == "cpu"
    # SD 1.5 in fp16 needs ~3.5 GB: a 6 GB card runs it whole (it took 8 GB free before issue 15).
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=int(5.5 * 2**30), need=sd1) == "full"
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=int(3.8 * 2**30), need=sd1) == "medium"
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=3 * 2**30, need=sd1) == "low"
    # SDXL: whole on a 12 GB card, model offload on an 8 GB one, sequential offload below.
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=int(11.3 * 2**30), need=sdxl) == "full"
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=int(7.4 * 2**30), need=sdxl) == "medium"
    assert resolve_profile("auto", cuda_available=True, free_vram_bytes=int(5.5 * 2**30), need=sdxl) == "low"


def test_a_folders_need_comes_from_its_weight_files(tiny_model):
    # The tiny SDXL's weights are a few MB: its need is SDXL's activations, not SDXL's 6.9 GB of weights.
    need = memory_need(str(tiny_model("sdxl")), FAMILIES["sdxl"])
    family = FAMILIES["sdxl"]
    assert need.largest_bytes < 50 * 2**20
    assert need.full_bytes < family.vram_fp16_bytes - family.weights_fp16_bytes + 50 * 2**20


def test_profiles_on_a_machine_without_gpu():
    assert resolve_profile("auto", cuda_available=False) == "cpu"
    low = plan_memory("low", cuda_available=False)
    # what needs an accelerator is skipped and listed; slicing and tiling still run on the CPU
    assert set(low.skipped) == {"half_precision", "sequential_cpu_offload"}
    assert low.attention_slicing and low.vae_slicing and low.vae_tiling and low.device == "cpu"
    medium_gpu = plan_memory("medium", cuda_available=True)
    assert medium_gpu.half_precision and medium_gpu.model_cpu_offload and not medium_gpu.skipped
    assert not plan_memory("cpu", cuda_available=False).half_precision
    with pytest.raises(GenerationError, match="Unknown memory profile"):
        resolve_profile("huge", cuda_available=False)


def test_low_profile_on_cpu_still_generates():
    r = Renderer(settings.IMAGESITE_MODEL, "low")
    assert r.profile == "low"
    assert r.render(fast())[0].size == (64, 64)


def _oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _oom_on_first_call(monkeypatch) -> list[str]:
    """Make the next pipeline call raise a CUDA OOM (no GPU here), later ones run for real; the
    returned list collects the profile of every call."""
    real_call = Renderer._call_pipe
    calls: list[str] = []

    def flaky(self, s, on_step):
        calls.append(self.profile)
        if len(calls) == 1:
            raise _oom()
        return real_call(self, s, on_step)

    monkeypatch.setattr(Renderer, "_call_pipe", flaky)
    return calls


def test_out_of_memory_retries_once_a_profile_lower(monkeypatch):
    # A GPU cannot exist here: the OOM is injected, the retry and reload are real.
    r = Renderer(settings.IMAGESITE_MODEL, "full")
    calls = _oom_on_first_call(monkeypatch)
    images = r.render(fast())
    assert calls == ["full", "medium"] and r.profile == "medium" and images[0].size == (64, 64)


def test_out_of_memory_retry_keeps_the_subjects_token_rows(monkeypatch, tmp_path):
    # The OOM is injected (no GPU here); the reload is real. A "full" adapter whose UNet is the
    # demo's own, plus a learnt-looking token embedding for "sks".
    import shutil

    from generation.pipeline import Adapter
    from generation.embeddings import save_token_embedding

    shutil.copytree(Path(settings.IMAGESITE_MODEL) / "unet", tmp_path / "unet")
    save_token_embedding({"token_ids": torch.tensor([48136]), "embeddings": torch.randn(1, 64, generator=torch.Generator().manual_seed(0))},
                         tmp_path / "token.safetensors", "sks")
    adapter = Adapter(kind="full", path=str(tmp_path), key="run-1", token_embedding=str(tmp_path / "token.safetensors"))
    s = fast(prompt="a sks square on a red background")
    r = Renderer(settings.IMAGESITE_MODEL, "full")
    base = np.asarray(r.render(s)[0])
    expected = np.asarray(r.render(s, adapter=adapter)[0])
    assert not np.array_equal(expected, base)  # the token rows change the picture

    calls = _oom_on_first_call(monkeypatch)
    retried = np.asarray(r.render(s, adapter=adapter)[0])
    assert calls == ["full", "medium"]
    # The medium profile slices attention, so not bit-equal: far nearer the subject's picture than the base's.
    def mad(a, b):
        return float(np.abs(a.astype(np.int16) - b).mean())

    assert mad(retried, expected) < mad(base, expected) / 10, (mad(retried, expected), mad(base, expected))
    monkeypatch.undo()
    # And the base is back: the reloaded (medium) pipeline renders as a fresh medium one does.
    fresh_medium = Renderer(settings.IMAGESITE_MODEL, "medium")
    assert np.array_equal(np.asarray(r.render(s)[0]), np.asarray(fresh_medium.render(s)[0]))


def test_out_of_memory_twice_fails_naming_size_and_profile(monkeypatch):
    r = Renderer(settings.IMAGESITE_MODEL, "medium")

    def always(self, s, on_step):
        raise _oom()

    monkeypatch.setattr(Renderer, "_call_pipe", always)
    with pytest.raises(GenerationError) as excinfo:
        r.render(fast(width=96, height=64, num_images=2))
    message = str(excinfo.value)
    assert "96×64" in message and "'low'" in message and "2 image" in message


def test_png_carries_a1111_parameters():
    s = fast(negative_prompt="blurry", seed=99)
    text = a1111_parameters(s, 100, "demo")
    assert text == (
        "a red circle on a blue background\nNegative prompt: blurry\n"
        "Steps: 4, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 100, Size: 64x64, Model: demo"
    )
    png = encode_png(Image.new("RGB", (8, 8)), text)
    assert Image.open(io.BytesIO(png)).text["parameters"] == text


# --- every family through the Renderer (tiny random weights: mechanics, not quality) -------------
@pytest.mark.parametrize(("family", "pipeline_class"), [("sdxl", "StableDiffusionXLPipeline"), ("sd2v", "StableDiffusionPipeline"),
                                                         ("sd2", "StableDiffusionPipeline")])
def test_each_family_renders_with_its_pipeline_class(tiny_model, family, pipeline_class):
    torch.set_num_threads(1)
    r = Renderer(str(tiny_model(family)), "cpu")
    assert type(r.pipe).__name__ == pipeline_class and r.family.key == family and r.info.family == family
    seen = []
    images = r.render(fast(width=64, height=96, steps=3, scheduler="euler", num_images=2),
                      on_step=lambda step, total: seen.append(step))
    assert [image.size for image in images] == [(64, 96), (64, 96)] and seen == [1, 2, 3]
    # The sampler is built from the model's scheduler config: SD 2.x 768's v-prediction survives the swap.
    assert r.pipe.scheduler.config.prediction_type == FAMILIES[family].prediction_type


def test_a_v_prediction_model_renders_differently_when_read_as_epsilon(tiny_model):
    # Guards the prediction type actually reaching the sampler (not only its config).
    r = Renderer(str(tiny_model("sd2v")), "cpu")
    v = np.asarray(r.render(fast(steps=3))[0])
    r.base_scheduler_config = dict(r.base_scheduler_config, prediction_type="epsilon")
    eps = np.asarray(r.render(fast(steps=3))[0])
    assert np.abs(v.astype(np.int16) - eps).mean() > 1.0


@pytest.mark.parametrize("family", ["sdxl", "sd2v"])
def test_single_files_of_each_family_render_like_their_folder(tiny_model, tmp_path, family):
    from generation.checkpoint_convert import save_single_file

    folder = tiny_model(family)
    path = save_single_file(folder, tmp_path / f"{family}.safetensors")
    from_file = Renderer(str(path), "cpu", single_file_config=str(folder))
    assert from_file.family.key == family and type(from_file.pipe).__name__ == type(Renderer(str(folder), "cpu").pipe).__name__
    a = np.asarray(from_file.render(fast(steps=2))[0], dtype=np.int16)
    b = np.asarray(Renderer(str(folder), "cpu").render(fast(steps=2))[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 1  # same weights; memory-mapped vs copied tensors may differ in the last bit


def test_an_unsupported_model_fails_readably_before_loading(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd3_medium.safetensors"
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1)}, str(path))
    with pytest.raises(GenerationError, match="sd3_medium.safetensors is Stable Diffusion 3, .* Supported: "):
        Renderer(str(path), "cpu")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_kohya_lora_with_a_bundled_token_applies_for_one_job(tiny_model, tmp_path, family):
    """The subject's kohya file (LoRA + bundled embedding, helper module generation.lora_files) through
    the Renderer: the picture is what the LoRA and the rows give when applied by hand, and the next
    job without it is the base again. Random LoRA weights: mechanics only."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from generation.embeddings import swap_token_embedding
    from generation.lora_files import read_lora_file, write_lora_file
    from generation.pipeline import Adapter

    folder = tiny_model(family)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    r = Renderer(str(folder), "cpu")
    ids = torch.tensor(r.pipe.tokenizer("sks", add_special_tokens=False).input_ids)
    rows = {"token_ids": ids, "embeddings": torch.randn(len(ids), 32, generator=generator),
            "embeddings_2": torch.randn(len(ids), 40, generator=generator)}  # tiny SDXL's bigG stand-in is 40 wide
    path = write_lora_file(tmp_path / "sks.safetensors", unet, {}, is_xl=family == "sdxl", token="sks", token_state=rows)
    s = fast(prompt="a sks square", steps=2)

    base = np.asarray(r.render(s)[0], dtype=np.int16)
    subject = np.asarray(r.render(s, adapter=Adapter(kind="lora", path=str(path), key="run-1"))[0], dtype=np.int16)
    assert np.array_equal(np.asarray(r.render(s)[0], dtype=np.int16), base)  # nothing leaks into the next job

    lora = read_lora_file(path)
    lora.load_into(r.pipe, "by-hand")
    swap_token_embedding(r.pipe.text_encoder, lora.token_rows(r.pipe.tokenizer))
    if family == "sdxl":
        swap_token_embedding(r.pipe.text_encoder_2, lora.token_rows(r.pipe.tokenizer_2, encoder=2))
    r.pipe.enable_lora()  # the renderer disabled LoRA after its job
    r.pipe.set_adapters(["by-hand"])
    by_hand = np.asarray(r._call_pipe(s, None)[0], dtype=np.int16)
    assert np.abs(subject - base).mean() > 1.0 and np.abs(subject - by_hand).max() <= 1


def test_the_renderer_reads_a1111_prompts_and_keeps_long_ones_whole(renderer):
    """Through the worker's own call: weights move the picture, and words past the 77th token still
    count (diffusers' plain call cuts them off)."""
    def image(prompt):
        return pixels(renderer.render(fast(prompt=prompt, seed=3, steps=6))[0]).astype(np.float32)

    plain = image("a red circle on a blue background")
    assert np.array_equal(plain, image("a red circle on a blue background"))
    assert np.array_equal(plain, image("a (red:1.0) circle on a blue background"))  # syntax, not words
    assert np.abs(image("a (red:1.6) circle on a blue background") - plain).mean() > 0.5
    filler = ", ".join(["a red circle on a blue background"] * 12)  # ~ 100 tokens
    assert np.abs(image(f"{filler}, green star") - image(f"{filler}, yellow heart")).mean() > 0.5
