"""DreamBooth training on the project's own tiny demo model: a few real steps, no fakes.

Plain pytest, no database. Runs are a handful of steps at 64 px with one CPU thread each, so the
whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from generation.embeddings import load_token_embedding, swap_token_embedding
from generation.lora_files import read_lora_file
from training.checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME
from training.dreambooth.loop import train_dreambooth
from training.dreambooth.devices import default_options_for
from training.dreambooth.options import TrainingOptions, check_options, model_resolution
from training.dreambooth.progress import TrainingCanceled, TrainingProgress
from training.dreambooth.prompts import class_prompt_for, class_prompt_pool, instance_prompts_for

DEMO_MODEL = Path(__file__).resolve().parents[1] / "generation" / "demo_model"
COLOURS = ["red", "blue", "green"]


def _checkered(background: str) -> Image.Image:
    img = Image.new("RGB", (64, 64), background)
    draw = ImageDraw.Draw(img)
    for i in range(4):
        for j in range(4):
            colour = "yellow" if (i + j) % 2 else "purple"
            draw.rectangle([12 + 10 * i, 12 + 10 * j, 21 + 10 * i, 21 + 10 * j], fill=colour)
    return img


PHOTOS = [_checkered(c) for c in COLOURS]
CAPTIONS = [f"a sks square on a {c} background" for c in COLOURS]


def _quick(**overrides: object) -> TrainingOptions:
    """A few steps of the demo model's defaults, small enough for a unit test."""
    base = dict(
        steps=4, batch_size=1, learning_rate=1e-2, num_class_images=2, class_inference_steps=2,
        validation_inference_steps=2, cpu_threads=1,
    )
    return default_options_for(DEMO_MODEL, **{**base, **overrides})


def _train(tmp: Path, options: TrainingOptions, **kwargs: object):
    return train_dreambooth(
        base_model=DEMO_MODEL, instance_images=PHOTOS, instance_prompts=CAPTIONS, token="sks",
        class_noun="square", options=options, output_dir=tmp / "out", **kwargs,
    )


def _render(pipe, prompt: str = "a sks square on a red background") -> np.ndarray:
    return pipe(
        prompt, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(7), output_type="np",
    ).images[0]


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread():
    """One torch thread for this module: tiny models gain nothing from two, and on a busy 2-core
    machine two threads spinning against another process are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory):
    """One short LoRA run with prior preservation and validation images, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("lora")
    reports: list[TrainingProgress] = []
    options = _quick(prior_preservation=True, validation_every=2, validation_prompts=("a sks square on a red background",))
    result = _train(tmp, options, progress=reports.append, class_images_dir=tmp / "class")
    return tmp, result, reports


@pytest.fixture(scope="module")
def demo_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_default_options_fit_the_demo_model() -> None:
    options = default_options_for(DEMO_MODEL)
    assert model_resolution(DEMO_MODEL) == options.resolution == 64
    assert options.method == "lora" and options.prior_preservation
    # The measured demo recipe (docs/dreambooth.md): attention and resnet convolutions, decoder half and middle.
    assert options.lora_blocks == ("up_blocks", "mid_block")
    assert set(options.lora_target_modules) == {"to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"}
    assert options.lr_schedule == "cosine" and options.lora_plus_ratio == 16
    check_options(options)
    # A full fine-tune drifts at the LoRA's rate: its own, lower default, which a chosen rate overrides.
    assert options.learning_rate == 3e-4 and default_options_for(DEMO_MODEL, method="full").learning_rate == 1e-4
    assert default_options_for(DEMO_MODEL, method="full", learning_rate=2e-4).learning_rate == 2e-4
    # Fewer steps chosen in the form shorten the token's warm-up with them, so any steps are valid.
    assert options.token_warmup_steps == 300
    assert default_options_for(DEMO_MODEL, steps=100).token_warmup_steps == 25
    check_options(default_options_for(DEMO_MODEL, steps=1))


def test_bad_options_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="steps"):
        check_options(TrainingOptions(steps=0))
    with pytest.raises(ValueError, match="mixed_precision"):
        check_options(TrainingOptions(mixed_precision="fp8"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prior_remix_share"):
        check_options(TrainingOptions(prior_remix_share=1.5))
    with pytest.raises(ValueError, match="lr_schedule"):
        check_options(TrainingOptions(lr_schedule="linear"))  # type: ignore[arg-type]


def test_prompts_fall_back_and_class_prompts_drop_the_token() -> None:
    assert instance_prompts_for(2, ["a sks dog on grass", ""], "sks", "dog") == [
        "a sks dog on grass",
        "a photo of sks dog",
    ]
    assert class_prompt_for("a sks shape on a red background", "sks", "shape") == "a shape on a red background"
    assert class_prompt_for("a photo of sks dog", "sks", "dog") == "a photo of a dog"


def test_lora_run_reports_every_step_and_validation_images(lora_run) -> None:
    _, result, reports = lora_run
    training = [r for r in reports if r.phase == "training"]
    assert [r.step for r in training] == [1, 2, 3, 4]
    assert all(r.total == 4 and r.loss is not None and np.isfinite(r.loss) for r in training)
    with_images = [r for r in training if r.validation_images]
    assert [r.step for r in with_images] == [2, 4]
    assert with_images[0].validation_images[0].size == (64, 64)
    assert [r.step for r in reports if r.phase == "class_images"][-1] == 2
    assert result.seconds_per_step > 0 and np.isfinite(result.final_loss)


def test_class_images_are_cached_with_their_prompts(lora_run) -> None:
    tmp, result, _ = lora_run
    assert result.class_images_generated == 2
    assert sorted(p.name for p in (tmp / "class").iterdir()) == [
        "class_00000.png", "class_00000.txt", "class_00001.png", "class_00001.txt",
    ]
    # The first class prompt is an instance caption without the token, the second one of the
    # demo model's own prompts that names the class.
    assert (tmp / "class" / "class_00000.txt").read_text() == "a square on a red background"
    second = (tmp / "class" / "class_00001.txt").read_text()
    assert " square on " in second and second in default_options_for(DEMO_MODEL).prior_prompts


def test_class_prompts_mix_captions_the_models_prompts_and_the_empty_prompt() -> None:
    model_prompts = ["a red square on a blue background", "a green circle on a red background", "a white star on a black background"]
    pool = class_prompt_pool(CAPTIONS, "sks", "square", model_prompts, 20, seed=0)
    assert len(pool) == 20 and pool.count("") == 2  # a tenth: CFG's unconditional prediction
    assert pool[:3] == ["a square on a red background", "a red square on a blue background", pool[2]]
    assert pool[2] in model_prompts[1:]  # then one that does not name the class
    assert set(pool) - {""} == {class_prompt_for(c, "sks", "square") for c in CAPTIONS} | set(model_prompts)
    assert not any("sks" in p for p in pool)
    # Without the model's prompts (an SD checkpoint): the captions, cycled, and the empty prompt.
    assert class_prompt_pool(CAPTIONS[:1], "sks", "square", [], 3, seed=0) == ["a square on a red background"] * 3


def test_default_prior_covers_the_demo_models_prompts_but_never_the_held_out_ones() -> None:
    from generation.demo.data import HELD_OUT, caption

    options = default_options_for(DEMO_MODEL)
    assert options.prior_target == "base" and options.train_token_embedding
    assert len(options.prior_prompts) > 300
    assert not {caption(*c) for c in HELD_OUT} & set(options.prior_prompts)


def test_lora_file_loads_changes_the_output_and_unloads_exactly(lora_run, demo_pipe) -> None:
    tmp, result, _ = lora_run
    assert result.checkpoint_path == tmp / "out" / LORA_WEIGHT_NAME
    # The LoRA and the learnt token embedding; no staging leftovers.
    assert sorted(p.name for p in (tmp / "out").iterdir()) == [LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME]
    assert result.size_bytes == sum(f.stat().st_size for f in result.files) > result.checkpoint_path.stat().st_size
    from safetensors import safe_open

    with safe_open(str(result.checkpoint_path), "pt") as f:  # kohya layout (generation.lora_files)
        conv_shapes = [f.get_slice(k).get_shape() for k in f.keys()
                       if "_resnets_" in k and ("_conv1." in k or "_conv2." in k) and k.endswith(".lora_down.weight")]
    assert conv_shapes and all(len(shape) == 4 for shape in conv_shapes)  # LoRA on the convolutions too

    base = _render(demo_pipe)
    read_lora_file(result.checkpoint_path).load_into(demo_pipe, "subject")
    try:
        with_lora = _render(demo_pipe)
    finally:
        demo_pipe.unload_lora_weights()
    after = _render(demo_pipe)
    assert np.abs(with_lora - base).max() > 1e-3
    assert np.array_equal(after, base)


def test_cancel_raises_and_writes_nothing(tmp_path: Path) -> None:
    steps_seen: list[int] = []
    with pytest.raises(TrainingCanceled):
        _train(
            tmp_path, _quick(prior_preservation=False, steps=50),
            progress=lambda p: steps_seen.append(p.step), should_cancel=lambda: len(steps_seen) >= 2,
        )
    assert steps_seen == [1, 2]
    assert not (tmp_path / "out").exists()


def test_text_encoder_lora_is_saved_and_loads(tmp_path: Path, demo_pipe) -> None:
    from safetensors import safe_open

    result = _train(tmp_path, _quick(prior_preservation=False, steps=2, train_text_encoder=True))
    with safe_open(str(result.checkpoint_path), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)

    ids = demo_pipe.tokenizer(["a sks square"], return_tensors="pt").input_ids
    with torch.no_grad():
        base = demo_pipe.text_encoder(ids)[0]
        read_lora_file(result.checkpoint_path).load_into(demo_pipe, "subject_te")
        with_lora = demo_pipe.text_encoder(ids)[0]
        demo_pipe.unload_lora_weights()
        after = demo_pipe.text_encoder(ids)[0]
    assert not torch.equal(with_lora, base)  # the text-encoder half was loaded, not just the UNet
    assert torch.equal(after, base)


def test_every_trained_lora_module_loads_back(tmp_path: Path, demo_pipe) -> None:
    # Every adapted module in the file (kohya layout: one lora_down per module) becomes an adapter
    # module again on load, attention and convolutions, UNet and text encoder alike; a file that
    # once mixed key layouts silently dropped the attention half (88 tensors saved, 24 loaded).
    lora = read_lora_file(_train(
        tmp_path, _quick(prior_preservation=False, steps=2, lora_blocks=("up_blocks",), train_text_encoder=True),
    ).checkpoint_path)
    saved = {part: [k for k in lora.tensors if k.startswith(prefix) and k.endswith(".lora_down.weight")]
             for part, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_"))}
    assert any("_attn2_to_k." in k for k in saved["unet"]) and any("_conv1." in k for k in saved["unet"])
    lora.load_into(demo_pipe, "whole")
    try:
        loaded = {part: sum(".lora_A.whole." in k for k in getattr(demo_pipe, part).state_dict())
                  for part in ("unet", "text_encoder")}
    finally:
        demo_pipe.unload_lora_weights()
    assert loaded == {part: len(keys) for part, keys in saved.items()} and loaded["text_encoder"] > 0


def test_subjects_with_and_without_a_text_encoder_lora_take_turns_on_one_renderer(tmp_path: Path) -> None:
    # The worker's warm pipeline keeps several LoRAs loaded (LRU) and switches per job: a subject
    # whose LoRA reaches the text encoder must not stay on for one whose LoRA does not, or for a
    # job without a subject.
    from django.conf import settings

    from generation.pipeline import Adapter, Renderer, RenderSettings

    with_te = _train(tmp_path / "te", _quick(prior_preservation=False, steps=2, train_text_encoder=True))
    unet_only = _train(tmp_path / "unet", _quick(prior_preservation=False, steps=2, train_text_encoder=False))
    a = Adapter(kind="lora", path=str(with_te.checkpoint_path), key="te")
    b = Adapter(kind="lora", path=str(unet_only.checkpoint_path), key="unet")
    s = RenderSettings(prompt="a sks square on a red background", negative_prompt="", seed=3, steps=4, guidance_scale=3.0,
                       width=64, height=64, scheduler="dpmpp_2m", num_images=1)

    def render(renderer: Renderer, adapter: Adapter | None = None) -> np.ndarray:
        return np.asarray(renderer.render(s, adapter=adapter)[0])

    fresh = Renderer(settings.IMAGESITE_MODEL, "cpu")  # nothing loaded before its base job, so its first LoRA job is fresh too
    fresh_base, fresh_b = render(fresh), render(fresh, b)
    r = Renderer(settings.IMAGESITE_MODEL, "cpu")
    first_a = render(r, a)
    assert np.array_equal(render(r, b), fresh_b)
    assert np.array_equal(render(r), fresh_base)
    assert np.array_equal(render(r, a), first_a)  # still cached, and whole again
    assert not np.array_equal(first_a, fresh_b)


def test_lora_blocks_limit_the_adapter_to_those_blocks(tmp_path: Path, demo_pipe) -> None:
    result = _train(tmp_path, _quick(prior_preservation=False, steps=2, lora_blocks=("up_blocks",)))
    lora = read_lora_file(result.checkpoint_path)
    # e.g. "lora_unet_up_blocks_1_attentions_0_..._to_q.lora_down.weight"
    assert lora.tensors and all(key.startswith("lora_unet_up_blocks_") for key in lora.tensors)

    base = _render(demo_pipe)
    lora.load_into(demo_pipe, "decoder_only")
    try:
        assert np.abs(_render(demo_pipe) - base).max() > 1e-3
    finally:
        demo_pipe.unload_lora_weights()
    with pytest.raises(ValueError, match="no LoRA target modules in the UNet blocks nowhere"):
        _train(tmp_path / "bad", _quick(prior_preservation=False, steps=1, lora_blocks=("nowhere",)))
    # A "block" may also be one top-level module, e.g. the UNet's last convolution.
    from training.dreambooth.lora import _unet_lora_targets

    only_out = _quick(lora_blocks=("conv_out", "up_blocks.1"), lora_target_modules=("conv_out", "to_q"))
    names = _unet_lora_targets(demo_pipe.unet, only_out)
    assert "conv_out" in names and all(n == "conv_out" or n.startswith("up_blocks.1.") for n in names)


def test_lora_plus_moves_the_b_matrices_faster_and_the_a_matrices_alike(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def trained(ratio: float) -> dict[str, torch.Tensor]:
        options = _quick(prior_preservation=False, steps=1, learning_rate=1e-3, lora_plus_ratio=ratio)
        return load_file(str(_train(tmp_path / str(ratio), options).checkpoint_path))

    plain, plus = trained(1.0), trained(16.0)
    assert plain.keys() == plus.keys()
    b_keys = [k for k in plain if k.endswith(".lora_up.weight")]  # kohya's names for B and A
    a_keys = [k for k in plain if k.endswith(".lora_down.weight")]
    assert b_keys and len(a_keys) == len(b_keys)
    # B starts at zero and Adam's first step moves every weight by about its rate: 16x for LoRA+.
    b_plain = torch.cat([plain[k].flatten().abs() for k in b_keys]).max()
    b_plus = torch.cat([plus[k].flatten().abs() for k in b_keys]).max()
    assert 0 < b_plain <= 1.5e-3 and 12 < b_plus / b_plain < 20
    # A starts from the same (seeded) weights in both runs and gets no gradient while B is zero.
    for k in a_keys:
        torch.testing.assert_close(plus[k], plain[k], atol=2.5e-3, rtol=0)
    with pytest.raises(ValueError, match="lora_plus_ratio"):
        check_options(TrainingOptions(lora_plus_ratio=0))


def test_full_fine_tune_writes_unet_weights_that_load(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    result = _train(tmp_path, _quick(method="full", prior_preservation=False, steps=2, learning_rate=1e-4))
    assert result.checkpoint_path == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [TOKEN_EMBEDDING_NAME, "unet"]
    tuned = UNet2DConditionModel.from_pretrained(tmp_path / "out" / "unet")
    base = UNet2DConditionModel.from_pretrained(DEMO_MODEL / "unet")
    changed = [
        name for (name, a), (_, b) in zip(tuned.state_dict().items(), base.state_dict().items())
        if not torch.equal(a, b)
    ]
    assert changed, "two steps of full fine-tuning changed no weight"
    assert result.size_bytes == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())


def test_rerun_into_the_same_folder_replaces_the_unet(tmp_path: Path) -> None:
    options = _quick(method="full", prior_preservation=False, steps=1, learning_rate=1e-4)
    _train(tmp_path, options)
    _train(tmp_path, replace(options, seed=1))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [TOKEN_EMBEDDING_NAME, "unet"]


def test_epsilon_models_train_on_the_noise_and_v_models_on_the_velocity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SD 1.5 predicts epsilon, the demo model v: the same code must pick the right target.
    import json
    import shutil

    from diffusers import DDPMScheduler

    calls: list[int] = []
    real = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: calls.append(1) or real(self, *a))

    _train(tmp_path / "v", _quick(prior_preservation=False, steps=1))
    assert calls == [1]

    eps_model = tmp_path / "eps_model"
    shutil.copytree(DEMO_MODEL, eps_model)
    config_path = eps_model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "epsilon"
    config_path.write_text(json.dumps(config))
    train_dreambooth(
        base_model=eps_model, instance_images=PHOTOS, instance_prompts=CAPTIONS, token="sks",
        class_noun="square", options=_quick(prior_preservation=False, steps=1), output_dir=tmp_path / "eps",
    )
    assert calls == [1]
    assert (tmp_path / "eps" / LORA_WEIGHT_NAME).exists()


def test_cached_class_images_are_reused_and_topped_up(lora_run, tmp_path: Path) -> None:
    tmp, _, _ = lora_run
    again = _train(tmp_path, _quick(steps=1, num_class_images=3), class_images_dir=tmp / "class")
    assert again.class_images_generated == 1  # the first two were cached, the third is new
    wanted = class_prompt_pool(CAPTIONS, "sks", "square", default_options_for(DEMO_MODEL).prior_prompts, 3, seed=0)
    assert (tmp / "class" / "class_00002.txt").read_text() == wanted[2]


def test_pivotal_tuning_moves_only_the_tokens_rows_and_swaps_back_exactly(tmp_path: Path, demo_pipe) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL, local_files_only=True, safety_checker=None)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    result = train_dreambooth(
        base_model=pipe, instance_images=PHOTOS, instance_prompts=CAPTIONS, token="sks", class_noun="square",
        options=_quick(prior_preservation=False, steps=3, token_learning_rate=1e-2), output_dir=tmp_path / "out",
    )
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    sks = pipe.tokenizer("sks", add_special_tokens=False).input_ids
    changed = torch.nonzero((after != before).any(dim=1)).flatten().tolist()
    assert changed == sks  # weight decay and the gradient left every other row bit-identical

    state = load_token_embedding(result.files[0])
    assert result.files[0].name == TOKEN_EMBEDDING_NAME and state["token_ids"].tolist() == sks
    assert torch.equal(state["embeddings"], after[sks])

    weight = demo_pipe.text_encoder.get_input_embeddings().weight
    base = weight.detach().clone()
    previous = swap_token_embedding(demo_pipe.text_encoder, state)
    assert torch.equal(weight[sks], state["embeddings"])
    swap_token_embedding(demo_pipe.text_encoder, previous)
    assert torch.equal(weight, base)


def test_token_warmup_trains_the_token_alone_first(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL, local_files_only=True, safety_checker=None)
    sks = pipe.tokenizer("sks", add_special_tokens=False).input_ids
    start = pipe.text_encoder.get_input_embeddings().weight[sks].detach().clone()
    seen: dict[int, tuple[float, bool]] = {}

    def report(p: TrainingProgress) -> None:
        if p.phase != "training":
            return
        lora_b = [w for name, w in pipe.unet.named_parameters() if "lora_B" in name]
        token_moved = not torch.equal(pipe.text_encoder.get_input_embeddings().weight[sks], start)
        seen[p.step] = (max(float(w.detach().abs().max()) for w in lora_b), token_moved)

    train_dreambooth(
        base_model=pipe, instance_images=PHOTOS, instance_prompts=CAPTIONS, token="sks", class_noun="square",
        options=_quick(num_class_images=2, steps=3, token_warmup_steps=2, learning_rate=1e-2), output_dir=tmp_path / "out",
        progress=report, class_images_dir=tmp_path / "class",
    )
    # lora_B starts at zero: it stays there while the token warms up, then trains.
    assert seen[1] == (0.0, True) and seen[2] == (0.0, True)
    assert seen[3][0] > 0
    with pytest.raises(ValueError, match="token_warmup_steps"):
        check_options(_quick(steps=3, token_warmup_steps=3))


def test_token_embedding_file_is_a_textual_inversion_file(lora_run) -> None:
    from safetensors import safe_open

    tmp, _, _ = lora_run
    with safe_open(str(tmp / "out" / TOKEN_EMBEDDING_NAME), "pt") as f:
        assert list(f.keys()) == ["emb_params"]  # what diffusers' load_textual_inversion and A1111 read
        assert f.metadata()["token"] == "sks"
    bad = tmp / "not_an_embedding.safetensors"
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 64)}, str(bad))
    with pytest.raises(ValueError, match="not a token embedding"):
        load_token_embedding(bad)


def test_base_prior_target_works_for_a_full_fine_tune_too(tmp_path: Path) -> None:
    # A full fine-tune has no adapter to switch off: the base prediction comes from a frozen copy.
    # Remixed prompts: the class half is also paired with the model's other prompts.
    result = _train(tmp_path, _quick(method="full", steps=2, learning_rate=1e-4, prior_target="base", prior_remix_share=1.0))
    assert (result.checkpoint_path / "unet").is_dir() and np.isfinite(result.final_loss)
    with pytest.raises(ValueError, match="prior_target"):
        check_options(replace(result.options, prior_target="teacher"))  # type: ignore[arg-type]


def test_cosine_schedule_waits_for_the_token_then_falls_towards_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rates: list[list[float]] = []  # every param group's learning rate at each optimizer step (a spy)
    real = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: rates.append([g["lr"] for g in self.param_groups]) or real(self, *a, **k))

    options = _quick(prior_preservation=False, steps=6, token_warmup_steps=2, lr_schedule="cosine")
    _train(tmp_path, options)
    lora, token = [r[0] for r in rates], [r[-1] for r in rates]
    assert len(rates) == 6
    # The warm-up (steps 1-2) and the LoRA's first step run at the full rates...
    assert lora[:3] == [options.learning_rate] * 3 and token[:3] == [options.token_learning_rate] * 3
    # ...then every rate falls along the cosine.
    assert lora[3:] == sorted(lora[3:], reverse=True) and lora[2] > lora[3] and lora[-1] < 0.2 * options.learning_rate
    assert token[-1] / options.token_learning_rate == pytest.approx(lora[-1] / options.learning_rate)
    # The constant schedule stays constant.
    rates.clear()
    _train(tmp_path / "constant", replace(options, lr_schedule="constant"))
    assert {r[0] for r in rates} == {options.learning_rate}
