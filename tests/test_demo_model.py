"""The shipped demo model (generation/demo_model): loads offline, draws at its native size, follows
the colours of the prompt, and tokenizes like CLIP. No database; a few seconds on two cores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model must never need the hub

MODEL_DIR = Path(os.environ.get("DEMO_MODEL_DIR")
                 or Path(__file__).resolve().parent.parent / "generation" / "demo_model")
RED, BLUE = np.array([220, 30, 30]), np.array([30, 70, 225])


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def defaults() -> dict:
    return json.loads((MODEL_DIR / "imagesite.json").read_text())


def _generate(pipe, prompt: str, seeds: list[int], defaults: dict, steps: int | None = None) -> np.ndarray:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe([prompt] * len(seeds), num_inference_steps=steps or defaults["steps"],
               guidance_scale=defaults["guidance_scale"], generator=gens, output_type="np").images
    return (out * 255).round()


def test_defaults_file_describes_the_model(pipe, defaults) -> None:
    assert defaults["width"] == defaults["height"] == 64
    assert defaults["scheduler"] == "dpmpp_2m" and 1 <= defaults["steps"] <= 50
    assert len(defaults["example_prompts"]) >= 5
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == defaults["width"]


@pytest.fixture(scope="module")
def red_on_blue(pipe, defaults) -> np.ndarray:
    """Four images of the test prompt at the model's defaults (no width/height given): (4, H, W, 3)."""
    return _generate(pipe, "a red circle on a blue background", [0, 1, 2, 3], defaults)


def test_generates_at_native_size_by_default(red_on_blue, defaults) -> None:
    assert red_on_blue.shape == (4, defaults["height"], defaults["width"], 3)


def test_red_circle_on_blue_follows_the_colours(red_on_blue) -> None:
    right = 0
    for img in red_on_blue:
        centre = img[28:36, 28:36].reshape(-1, 3).mean(0)
        edge = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                               img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)]).mean(0)
        centre_red = np.linalg.norm(centre - RED) < np.linalg.norm(centre - BLUE)
        edge_blue = np.linalg.norm(edge - BLUE) < np.linalg.norm(edge - RED)
        right += bool(centre_red and edge_blue)
    assert right >= 3, f"only {right}/4 seeds drew red on blue"


def test_swapping_the_colour_words_swaps_the_colours(pipe, defaults, red_on_blue) -> None:
    blue_on_red = _generate(pipe, "a blue circle on a red background", [0], defaults)[0]
    # Same seed, same starting noise: only the prompt can have moved the colours.
    assert red_on_blue[0, 28:36, 28:36, 0].mean() > blue_on_red[28:36, 28:36, 0].mean() + 50
    assert red_on_blue[0, :2, :, 2].mean() > blue_on_red[:2, :, 2].mean() + 50


def test_tokenizer_is_clip(pipe) -> None:
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408


def test_unseen_and_overlong_prompts_do_not_crash(pipe) -> None:
    prompts = ["zxqv ünïcödé 🤖 photorealistic castle, 8k", "red " * 100, ""]
    out = pipe(prompts, num_inference_steps=2, output_type="np").images
    assert out.shape == (3, 64, 64, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "DDIMScheduler",
                                  "PNDMScheduler", "DPMSolverMultistepScheduler"])
def test_common_schedulers_run_from_the_shipped_config(pipe, name) -> None:
    import diffusers

    base = pipe.scheduler
    try:
        pipe.scheduler = getattr(diffusers, name).from_config(base.config)
        # The zero-terminal-SNR schedule travels in trained_betas, so every class samples from t=999.
        assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
        out = pipe("a red circle on a blue background", num_inference_steps=3, output_type="np").images
        assert np.isfinite(out).all()
    finally:
        pipe.scheduler = base
