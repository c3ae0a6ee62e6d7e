"""Caption suggestions for subject photos, for models whose captions name a plain background colour.

The demo model learnt "a red star on a blue background": a subject trained on "a photo of sks square"
is never drawn when asked for "a sks square on a green background" (bench/dreambooth_bench.py
--no-captions: 0% likeness, against 90% with the background named). So where the model lists its
background colours (imagesite.json "caption_backgrounds"), a photo whose border is mostly one of them
gets "a <token> <class> on a <colour> background" suggested; the owner can edit or clear it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

BORDER_PX = 2  # the ring of pixels read at the crop's edges
MAX_DISTANCE = 60.0  # RGB distance within which a border pixel counts as a palette colour
MIN_SHARE = 0.6  # share of the ring that must be that one colour


def background_colour(crop: Image.Image, backgrounds: Sequence[tuple[str, tuple[int, int, int]]]) -> str | None:
    """The palette colour most of the crop's border is, or None when no colour holds the border."""
    if not backgrounds:
        return None
    rgb = np.asarray(crop.convert("RGB"), dtype=np.float32)
    b = BORDER_PX
    ring = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    palette = np.array([colour for _, colour in backgrounds], dtype=np.float32)
    distance = np.linalg.norm(ring[:, None, :] - palette[None, :, :], axis=2)
    nearest, close = distance.argmin(axis=1), distance.min(axis=1) < MAX_DISTANCE
    votes = np.bincount(nearest[close], minlength=len(backgrounds))
    best = int(votes.argmax())
    return backgrounds[best][0] if votes[best] >= MIN_SHARE * len(ring) else None


def suggest_caption(crop: Image.Image, *, token: str, class_noun: str, backgrounds: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    """ "a sks square on an orange background", or "" (training's fallback) when the background is not one of them."""
    colour = background_colour(crop, backgrounds)
    if colour is None:
        return ""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"a {token} {class_noun} on {article} {colour} background"
