"""Small builders for rows and files the tests need (images made in memory with Pillow)."""
from __future__ import annotations

import io

from django.core.files.base import ContentFile
from PIL import Image

from generation.models import GeneratedImage, Generation
from imagesite.jobs import JobStatus


def make_generation(owner, **overrides) -> Generation:
    values = dict(
        prompt="a red circle on a blue background",
        seed=7,
        steps=4,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler="dpmpp_2m",
        num_images=1,
        model_name="test",
    )
    values.update(overrides)
    return Generation.objects.create(owner=owner, **values)


def png_bytes(color=(200, 30, 30), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_image(owner, generation: Generation | None = None, **gen_overrides) -> GeneratedImage:
    generation = generation or make_generation(owner, status=JobStatus.SUCCEEDED, **gen_overrides)
    image = GeneratedImage(generation=generation, index=generation.images.count(), seed=generation.seed, width=64, height=64)
    image.file.save("x.png", ContentFile(png_bytes()), save=False)
    image.thumbnail.save("t.png", ContentFile(png_bytes()), save=False)
    image.save()
    return image
