"""A job's LoRAs fused into the UNet's weights for the job (generation.adapters, issue 17 "a subject
costs little"): the picture is the peft path's (within 1 level), and the base weights come back
exactly from a kept copy, so the next job without adapters is the base bit for bit, even after many
jobs and a job that fails midway.

The LoRAs (UNet and text encoder) and the subject's token rows have seeded random weights on the demo
model: random weights test mechanics only (what is merged, what comes back), never what a LoRA draws.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings

from generation.adapters import Adapter
from generation.pipeline import Renderer, RenderSettings

from .torch_support import offline_hub, one_torch_thread  # noqa: F401

PROMPT = "a sks square on a red background"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(settings.IMAGESITE_MODEL, "cpu")


@pytest.fixture(scope="module")
def loras(renderer, tmp_path_factory) -> dict[str, Adapter]:
    """"ink": UNet + text-encoder LoRA; "paper": UNet only; "sks": a subject's (run) LoRA bundling its
    token rows. All random (mechanics only)."""
    folder = tmp_path_factory.mktemp("fuse-loras")
    ids = torch.tensor(renderer.pipe.tokenizer("sks", add_special_tokens=False).input_ids)
    width = renderer.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    rows = {"token_ids": ids, "embeddings": torch.randn(len(ids), width, generator=torch.Generator().manual_seed(9)) * 2}
    return {
        "ink": Adapter(kind="lora", path=str(_lora(folder / "ink.safetensors", seed=1, text_encoder=True)), key="lora-1", name="ink"),
        "paper": Adapter(kind="lora", path=str(_lora(folder / "paper.safetensors", seed=2)), key="lora-2", name="paper"),
        "sks": Adapter(kind="lora", path=str(_lora(folder / "sks.safetensors", seed=3, token_state=rows)), key="run-7", name="sks"),
    }


def _lora(path: Path, *, seed: int, text_encoder: bool = False, token_state: dict | None = None) -> Path:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextModel

    from generation.lora_files import write_lora_file

    model = Path(settings.IMAGESITE_MODEL)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    encoders = {}
    if text_encoder:
        encoders["text_encoder"] = CLIPTextModel.from_pretrained(model / "text_encoder")
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), encoders["text_encoder"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in (unet, *encoders.values()):
            for name, p in part.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return write_lora_file(path, unet, encoders, is_xl=False, token="sks" if token_state else None, token_state=token_state)


def _settings(**overrides) -> RenderSettings:
    values = dict(prompt=PROMPT, negative_prompt="", seed=11, steps=3, guidance_scale=7.5, width=64, height=64,
                  scheduler="euler", num_images=1)
    values.update(overrides)
    return RenderSettings(**values)


def _pixels(renderer: Renderer, adapters=None, **overrides) -> np.ndarray:
    return np.asarray(renderer.render(_settings(**overrides), adapter=adapters)[0], dtype=np.int16)


def _base_weights(renderer: Renderer) -> dict[str, torch.Tensor]:
    """Every UNet and text-encoder parameter under its base name (peft's `.base_layer` taken out, its
    LoRA tensors left out: they stay loaded in the LRU cache, bypassed)."""
    weights = {}
    for part in ("unet", "text_encoder"):
        for name, p in getattr(renderer.pipe, part).named_parameters():
            if ".lora_" not in name:
                weights[f"{part}.{name.replace('.base_layer', '')}"] = p.detach().clone()
    return weights


def _assert_base(renderer: Renderer, weights: dict[str, torch.Tensor], image: np.ndarray) -> None:
    now = _base_weights(renderer)
    assert now.keys() == weights.keys()
    changed = [name for name in weights if not torch.equal(now[name], weights[name])]
    assert not changed, changed[:5]
    assert np.array_equal(_pixels(renderer), image)


def _jobs(loras) -> list:
    ink, paper, sks = loras["ink"], loras["paper"], loras["sks"]
    return [ink, [replace(ink, weight=0.8), replace(paper, weight=0.6, unet_weight=-0.4)], sks, [sks, replace(paper, weight=0.5)]]


def test_a_fused_job_gives_the_peft_paths_picture(renderer, loras):
    """One LoRA, two with weights (one with its own UNet weight), a subject's with its token rows:
    fused and unfused pictures agree within 1 level, and each differs from the base."""
    base = _pixels(renderer)
    for adapters in _jobs(loras):
        renderer.adapters.fuse = False
        try:
            peft_path = _pixels(renderer, adapters)
        finally:
            renderer.adapters.fuse = True
        fused = _pixels(renderer, adapters)
        assert np.abs(fused - base).mean() > 1.0
        assert np.abs(fused - peft_path).max() <= 1


def test_twenty_jobs_with_loras_leave_the_base_bit_identical(renderer, loras):
    base_image = _pixels(renderer)
    weights = _base_weights(renderer)
    jobs = _jobs(loras)
    for index in range(20):
        _pixels(renderer, jobs[index % len(jobs)], seed=index, steps=1)
    _assert_base(renderer, weights, base_image)


def test_a_job_that_fails_midway_still_restores_the_base(renderer, loras, monkeypatch):
    """A cancel at a step, and a failure while merging (after some layers were merged already)."""
    from peft.tuners.lora import layer

    base_image = _pixels(renderer)
    weights = _base_weights(renderer)

    class Canceled(Exception):
        pass

    def cancel(step: int, total: int) -> None:
        raise Canceled

    with pytest.raises(Canceled):
        renderer.render(_settings(), on_step=cancel, adapter=_jobs(loras)[1])
    _assert_base(renderer, weights, base_image)

    calls = {"n": 0}
    delta = layer.Linear.get_delta_weight

    def failing_delta(self, adapter):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("merge failed")
        return delta(self, adapter)

    monkeypatch.setattr(layer.Linear, "get_delta_weight", failing_delta)
    with pytest.raises(RuntimeError, match="merge failed"):
        renderer.render(_settings(), adapter=loras["sks"])
    assert calls["n"] == 5
    monkeypatch.undo()
    _assert_base(renderer, weights, base_image)
