"""How faithfully the demo model draws prompts it never saw: colours and shape of held-out combinations.

    .venv/bin/python bench/demo_fidelity.py [--model generation/demo_model] [--seeds 2] [--no-pndm]

For every (shape, foreground, background) combination held out of training, generates images with
the model's default scheduler, steps and guidance (its imagesite.json), and checks automatically:

- background: the median colour of the 2-px frame, snapped to the nearest palette colour;
- foreground: the commonest palette colour, other than the background, in the central 24x24 px;
- shape: a small CNN trained here (about half a minute) on foreground masks of the synthetic data;
  it sees only the mask (pixels nearer the foreground colour than the background), so it judges the
  outline whatever the colours.

Prints each rate, all three together, seconds per image, peak RSS and the model's size on disk;
then the same rates with 50-step PNDM. Goal: each >= 90%, all three >= 80%.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation.demo.data import (  # noqa: E402
    ALL_COMBOS, COLOUR_NAMES, COLOURS, HELD_OUT, SHAPES, TRAIN_COMBOS, caption, make_dataset,
)

PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)  # (8, 3)
SCHEDULERS = {  # imagesite.json "scheduler" name -> diffusers class name
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
}


# ---------------------------------------------------------------------------------------------
# Colour and mask measurements on uint8 (64, 64, 3) RGB images


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into the palette of the nearest colour (RGB distance) for each pixel of (..., 3)."""
    d = ((rgb[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def measure_colours(img: np.ndarray) -> tuple[int, int]:
    """(foreground, background) palette indices of one uint8 (H, W, 3) image."""
    frame = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                            img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg = int(nearest_colour(np.median(frame, axis=0)))
    h, w = img.shape[:2]
    centre = nearest_colour(img[h // 2 - 12:h // 2 + 12, w // 2 - 12:w // 2 + 12]).ravel()
    counts = np.bincount(centre, minlength=len(PALETTE))
    counts[bg] = 0
    fg = int(counts.argmax()) if counts.max() > 0 else bg
    return fg, bg


def foreground_mask(img: np.ndarray, fg_rgb: np.ndarray, bg_rgb: np.ndarray) -> np.ndarray:
    """float32 (H, W): 1 where a pixel is nearer ``fg_rgb`` than ``bg_rgb`` (RGB distance)."""
    x = img.astype(np.float32)
    return (((x - fg_rgb) ** 2).sum(-1) < ((x - bg_rgb) ** 2).sum(-1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Shape classifier on foreground masks


class ShapeNet(nn.Module):
    """Mask (B, 1, 64, 64) -> logits over the 7 shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1),
                                    nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)])
        self.head = nn.Linear(64, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.head(x.mean((2, 3)))


def _masks_of(images: np.ndarray, combos: list, rng: np.random.Generator) -> np.ndarray:
    """Masks (N, 64, 64) of synthetic images, with pixel noise so the classifier tolerates ragged
    generated outlines."""
    masks = []
    for im, (_, fg, bg) in zip(images, combos):
        noisy = np.clip(im + rng.normal(0, 25, im.shape).astype(np.float32), 0, 255)
        masks.append(foreground_mask(noisy, np.array(COLOURS[fg], np.float32),
                                     np.array(COLOURS[bg], np.float32)))
    return np.stack(masks)


def train_shape_classifier(seed: int = 0, n: int = 4000, epochs: int = 4) -> tuple[ShapeNet, float]:
    """Train ShapeNet on masks of ``n`` synthetic images (all combinations); CPU, ~30 s.
    Returns the net and its accuracy on 700 fresh synthetic images."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, combos = make_dataset(n, seed=seed + 7, combos=ALL_COMBOS)
    x = torch.from_numpy(_masks_of(images, combos, rng))[:, None]
    y = torch.tensor([SHAPES.index(c[0]) for c in combos])
    net = ShapeNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    images, combos = make_dataset(700, seed=seed + 8, combos=ALL_COMBOS)
    xv = torch.from_numpy(_masks_of(images, combos, rng))[:, None]
    yv = torch.tensor([SHAPES.index(c[0]) for c in combos])
    with torch.no_grad():
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    return net.eval(), acc


def classify_shape(net: ShapeNet, img: np.ndarray, fg: int, bg: int) -> int:
    """Shape index of a generated image, given its measured foreground/background palette indices."""
    mask = foreground_mask(img, PALETTE[fg], PALETTE[bg])
    with torch.no_grad():
        return int(net(torch.from_numpy(mask)[None, None]).argmax(1))


# ---------------------------------------------------------------------------------------------
# Generation and scoring


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             batch: int = 8, guidance_rescale: float = 0.0) -> tuple[np.ndarray, float]:
    """uint8 (len(prompts), 64, 64, 3) images, prompt i with seed seeds[i]; and seconds per image."""
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        res = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   guidance_rescale=guidance_rescale, generator=gens, output_type="np").images
        out.append((res * 255).round().astype(np.uint8))
    return np.concatenate(out), (time.perf_counter() - t0) / len(prompts)


def score(net: ShapeNet, images: np.ndarray, combos: list) -> dict[str, float]:
    """Rates (0..1) of right foreground, background, shape and all three over ``images``."""
    fg_ok = bg_ok = shape_ok = all_ok = 0
    for img, (shape, fg, bg) in zip(images, combos):
        mfg, mbg = measure_colours(img)
        ms = classify_shape(net, img, mfg, mbg)
        a, b, c = mfg == COLOUR_NAMES.index(fg), mbg == COLOUR_NAMES.index(bg), ms == SHAPES.index(shape)
        fg_ok += a
        bg_ok += b
        shape_ok += c
        all_ok += a and b and c
    n = len(combos)
    return {"foreground": fg_ok / n, "background": bg_ok / n, "shape": shape_ok / n, "all": all_ok / n}


def _dir_mb(path: Path, suffix: str = "") -> float:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "generation" / "demo_model")
    p.add_argument("--seeds", type=int, default=2, help="images per held-out combination")
    p.add_argument("--no-pndm", action="store_true", help="skip the 50-step PNDM comparison")
    p.add_argument("--sheet", type=Path, default=None, help="save the default-scheduler images here")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="override imagesite.json")
    p.add_argument("--steps", type=int, default=None, help="override imagesite.json")
    p.add_argument("--train-combos", type=int, default=0,
                   help="also score this many combinations seen in training (default sampler only)")
    p.add_argument("--guidance-rescale", type=float, default=None, help="override imagesite.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    import diffusers
    from diffusers import StableDiffusionPipeline

    defaults = json.loads((a.model / "imagesite.json").read_text())
    defaults["guidance_scale"] = a.guidance or defaults["guidance_scale"]
    defaults["steps"] = a.steps or defaults["steps"]
    rescale = float(a.guidance_rescale if a.guidance_rescale is not None
                    else defaults.get("guidance_rescale", 0.0))
    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.model)
    load_s = time.perf_counter() - t
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config

    # 1. One image alone, as the web app makes it (batched figures below are cheaper per image).
    pipe.scheduler = getattr(diffusers, SCHEDULERS[defaults["scheduler"]]).from_config(base_config)
    t = time.perf_counter()
    pipe("a red circle on a blue background", num_inference_steps=defaults["steps"],
         guidance_scale=defaults["guidance_scale"], guidance_rescale=rescale,
         generator=torch.Generator().manual_seed(0))
    single = time.perf_counter() - t

    # 2. The held-out combinations, with the default sampler and with 50-step PNDM.
    combos = [c for c in sorted(HELD_OUT) for _ in range(a.seeds)]
    prompts = [caption(*c) for c in combos]
    seeds = [1000 + i for i in range(len(combos))]
    runs = [(defaults["scheduler"], defaults["steps"])] + ([] if a.no_pndm else [("pndm", 50)])
    results = []
    for name, steps in runs:
        cls = getattr(diffusers, SCHEDULERS[name])
        pipe.scheduler = cls.from_config(base_config)
        images, per_image = generate(pipe, prompts, seeds, steps, defaults["guidance_scale"],
                                     guidance_rescale=rescale)
        results.append((name, cls.__name__, steps, images, per_image))
    seen: list = []
    if a.train_combos:
        rng = np.random.default_rng(0)
        seen = [TRAIN_COMBOS[i] for i in rng.choice(len(TRAIN_COMBOS), a.train_combos, replace=False)]
        pipe.scheduler = getattr(diffusers, SCHEDULERS[defaults["scheduler"]]).from_config(base_config)
        seen_images, _ = generate(pipe, [caption(*c) for c in seen], [2000 + i for i in range(len(seen))],
                                  defaults["steps"], defaults["guidance_scale"], guidance_rescale=rescale)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the classifier

    # 3. Judge them.
    t = time.perf_counter()
    net, acc = train_shape_classifier()
    print(f"shape classifier: {acc:.1%} on fresh synthetic masks ({time.perf_counter() - t:.0f} s)")
    print(f"model {a.model}: {len(HELD_OUT)} held-out combinations x {a.seeds} seeds = "
          f"{len(combos)} images per run, guidance {defaults['guidance_scale']} (rescale {rescale}), "
          f"load {load_s:.1f} s")
    print(f"{'scheduler':<28}{'steps':>6}{'fg':>8}{'bg':>8}{'shape':>8}{'all 3':>8}{'s/img':>8}")
    for name, cls_name, steps, images, per_image in results:
        r = score(net, images, combos)
        print(f"{name + ' (' + cls_name.removesuffix('Scheduler') + ')':<28}{steps:>6}"
              f"{r['foreground']:>8.1%}{r['background']:>8.1%}{r['shape']:>8.1%}{r['all']:>8.1%}"
              f"{per_image:>8.2f}")
        if a.sheet is not None and name == defaults["scheduler"]:
            from PIL import Image
            cols = 8
            rows = -(-len(images) // cols)
            pad = np.zeros((rows * cols - len(images), 64, 64, 3), np.uint8)
            tiles = np.concatenate([images, pad]).reshape(rows, cols, 64, 64, 3)
            sheet = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * 64, cols * 64, 3)
            Image.fromarray(sheet).save(a.sheet)
    if seen:
        r = score(net, seen_images, seen)
        print(f"{'seen in training':<28}{defaults['steps']:>6}{r['foreground']:>8.1%}"
              f"{r['background']:>8.1%}{r['shape']:>8.1%}{r['all']:>8.1%}"
              f"   ({len(seen)} training combinations, default sampler)")
    print(f"s/img above: batches of 8 prompts. One image alone ({defaults['steps']} steps): "
          f"{single:.2f} s; peak RSS while generating {rss_mb:.0f} MB; model on disk "
          f"{_dir_mb(a.model):.1f} MB (weights {_dir_mb(a.model, '.safetensors'):.1f} MB); "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
