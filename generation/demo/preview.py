"""A contact sheet of a demo model folder: one row per prompt, one column per seed.

    .venv/bin/python -m generation.demo.preview generation/demo_model /tmp/grid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from .data import HELD_OUT, caption

DEFAULT_PROMPTS = [caption(*c) for c in sorted(HELD_OUT)[::4]] + [
    "a red circle on a blue background", "a blue circle on a red background"]


def contact_sheet(model_dir: Path, prompts: list[str], seeds: list[int], *, steps: int | None = None,
                  guidance_scale: float | None = None, zoom: int = 2) -> Image.Image:
    """Generate ``len(prompts) x len(seeds)`` images at the model's native size (defaults from its
    imagesite.json) and tile them into one RGB image, scaled up ``zoom`` times (nearest)."""
    defaults = json.loads((model_dir / "imagesite.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for prompt in prompts:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe([prompt] * len(seeds), num_inference_steps=steps or defaults["steps"],
                   guidance_scale=guidance_scale or defaults["guidance_scale"], generator=gens,
                   width=defaults["width"], height=defaults["height"], output_type="np").images
        rows.append(np.concatenate(list(out), axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    img = Image.fromarray(grid)
    return img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out_png", type=Path)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--prompt", action="append", default=None)
    a = p.parse_args()
    prompts = a.prompt or DEFAULT_PROMPTS
    contact_sheet(a.model_dir, prompts, list(range(a.seeds)), steps=a.steps).save(a.out_png)
    for i, pr in enumerate(prompts):
        print(f"row {i}: {pr}")


if __name__ == "__main__":
    main()
