"""Caption suggestions: a photo on a background the model names gets "a sks square on a green background".

Plain pytest, no database; the photos go through the real upload pipeline (training.photos) first.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from generation.demo.data import COLOURS
from generation.modelinfo import describe_model
from imagesite.settings import BASE_DIR
from training.captions import suggest_caption
from training.photos import check_and_prepare

DEMO = describe_model(str(BASE_DIR / "generation" / "demo_model"))


def _upload_crop(img: Image.Image) -> Image.Image:
    """The square crop training sees, after the photo went through the upload checks."""
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90)
    return Image.open(io.BytesIO(check_and_prepare(buffer.getvalue(), resolution=DEMO.native_size).crop_bytes))


def _checkered_on(background: tuple[int, int, int], size: int = 240) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    cell = size // 8
    for i in range(4):
        for j in range(4):
            x, y = 2 * cell + i * cell, 2 * cell + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=COLOURS["yellow"] if (i + j) % 2 else COLOURS["purple"])
    return img


def test_the_demo_model_lists_its_backgrounds_and_sd_lists_none():
    assert dict(DEMO.caption_backgrounds) == COLOURS
    assert describe_model(str(BASE_DIR / "generation" / "sd15_config")).caption_backgrounds == ()


@pytest.mark.parametrize("name", list(COLOURS))
def test_each_demo_background_is_named(name):
    crop = _upload_crop(_checkered_on(COLOURS[name]))
    article = "an" if name == "orange" else "a"
    assert suggest_caption(crop, token="sks", class_noun="square", backgrounds=DEMO.caption_backgrounds) == f"a sks square on {article} {name} background"


def test_no_suggestion_without_one_plain_background_or_without_a_palette():
    half = _checkered_on(COLOURS["red"])
    ImageDraw.Draw(half).rectangle([0, 0, 119, 239], fill=COLOURS["blue"])  # half the border red, half blue
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 240, 3), dtype=np.uint8))
    brown = _checkered_on((120, 80, 40))  # plain, but no colour the model knows
    for img in (half, noise, brown):
        assert suggest_caption(_upload_crop(img), token="sks", class_noun="square", backgrounds=DEMO.caption_backgrounds) == ""
    green = _upload_crop(_checkered_on(COLOURS["green"]))
    assert suggest_caption(green, token="sks", class_noun="square", backgrounds=()) == ""
