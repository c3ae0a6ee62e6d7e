"""The synthetic data set of the demo model: one coloured shape on a plain background, drawn with Pillow.

Every image is 64x64 RGB, one shape in one palette colour on a background of another palette colour,
captioned "a red star on a blue background". The shape always covers the image centre and the four
image edges are always background, so a fidelity check can read the foreground at the centre and the
background at the edges.

Some (shape, foreground, background) combinations are held out of training entirely
(:data:`HELD_OUT`) so the benchmark can show the model composes colours and shapes it saw apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# Shapes are drawn this many times larger and box-filtered down, for clean anti-aliased edges.
_SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 140, 20),
    "purple": (140, 40, 175),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES: list[str] = list(COLOURS)
SHAPES: list[str] = ["circle", "square", "triangle", "star", "heart", "cross", "diamond"]

Combo = tuple[str, str, str]  # (shape, foreground colour, background colour)


def caption(shape: str, fg: str, bg: str) -> str:
    """The training caption of one combination, e.g. ``"a red star on an orange background"``."""
    return f"{_article(fg)} {fg} {shape} on {_article(bg)} {bg} background"


def _article(word: str) -> str:
    """ "an" before a vowel (only "orange" among the colours), else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def _held_out() -> frozenset[Combo]:
    """Four (foreground, background) pairs per shape, 28 of the 392 combinations.

    The pairs rotate with the shape so that every colour is held out as a foreground and as a
    background, while each held-out triple's parts (shape in that colour, that colour pair) still
    occur in training with other partners.
    """
    held: set[Combo] = set()
    for i, shape in enumerate(SHAPES):
        for k in range(4):
            fg = (i + 2 * k) % 8
            bg = (fg + 3 + k) % 8  # offset 3..6, never the foreground itself
            held.add((shape, COLOUR_NAMES[fg], COLOUR_NAMES[bg]))
    return frozenset(held)


HELD_OUT: frozenset[Combo] = _held_out()
ALL_COMBOS: list[Combo] = [
    (s, fg, bg) for s in SHAPES for fg in COLOUR_NAMES for bg in COLOUR_NAMES if fg != bg
]
TRAIN_COMBOS: list[Combo] = [c for c in ALL_COMBOS if c not in HELD_OUT]


def _outline(shape: str, radius: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``shape`` centred on the origin, in pixels; ``None`` for the circle."""
    r = radius
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.82
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        # Equilateral, pointing up, nudged down so its centroid is not too near the top edge.
        return [(r * math.cos(a), r * math.sin(a) + 0.15 * r)
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for j in range(10):
            rad = r if j % 2 == 0 else r * 0.45
            a = -math.pi / 2 + j * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return pts
    if shape == "heart":
        pts = []
        for j in range(64):
            t = 2 * math.pi * j / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x * r / 16.5, -y * r / 16.5 - 0.1 * r))
        return pts
    if shape == "cross":
        w, h = r * 0.34, r * 0.95
        return [(-w, -h), (w, -h), (w, -w), (h, -w), (h, w), (w, w), (w, h), (-w, h),
                (-w, w), (-h, w), (-h, -w), (-w, -w)]
    if shape == "diamond":
        return [(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)]
    raise ValueError(f"unknown shape {shape!r}")


def draw(shape: str, fg: str, bg: str, rng: np.random.Generator) -> Image.Image:
    """Draw one 64x64 RGB image of ``shape`` in colour ``fg`` on a plain ``bg`` background.

    Size (radius 16-27 px), position (centre within a few px of the image centre, the shape never
    touching the edge) and rotation (+-15 degrees, not for the circle) are drawn from ``rng``.
    """
    s = _SUPERSAMPLE
    radius = float(rng.uniform(16.0, 27.0))
    reach = max(0.0, min(6.0, 30.5 - radius))  # keep the edges background, the centre covered
    cx = IMAGE_SIZE / 2 + float(rng.uniform(-reach, reach))
    cy = IMAGE_SIZE / 2 + float(rng.uniform(-reach, reach))
    angle = math.radians(float(rng.uniform(-15.0, 15.0)))

    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[bg])
    pen = ImageDraw.Draw(img)
    outline = _outline(shape, radius)
    if outline is None:
        pen.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s, (cy + radius) * s],
                    fill=COLOURS[fg])
    else:
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [((cx + x * ca - y * sa) * s, (cy + x * sa + y * ca) * s) for x, y in outline]
        pen.polygon(pts, fill=COLOURS[fg])
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def sample_combos(n: int, rng: np.random.Generator,
                  combos: list[Combo] | None = None) -> Iterator[Combo]:
    """Yield ``n`` combinations drawn uniformly (with replacement) from ``combos`` (default: training)."""
    pool = TRAIN_COMBOS if combos is None else combos
    for idx in rng.integers(0, len(pool), size=n):
        yield pool[int(idx)]


def make_dataset(n: int, seed: int,
                 combos: list[Combo] | None = None) -> tuple[np.ndarray, list[Combo]]:
    """Draw ``n`` images deterministically for ``seed``.

    Returns a uint8 array of shape (n, 64, 64, 3) and the list of the ``n`` combinations drawn.
    """
    rng = np.random.default_rng(seed)
    picked = list(sample_combos(n, rng, combos))
    images = np.stack([np.asarray(draw(s, fg, bg, rng)) for s, fg, bg in picked])
    return images, picked
