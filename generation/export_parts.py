"""What generation puts in a user's data export (imagesite.export): every image as stored (its PNG
settings chunk intact), the inputs of img2img/inpainting jobs, uploaded LoRAs and embeddings, and the
generations with their settings for jobs.json. Registered from GenerationConfig.ready. Torch-free."""
from __future__ import annotations

from typing import Iterator

from imagesite.export import ArchiveFile, Records, plain_fields, safe_name

from .inputs import stored_format
from .models import Embedding, GeneratedImage, Generation, Lora

# Internal bookkeeping of the queue, not the user's settings or the job's story.
_JOB_INTERNALS = ("heartbeat_at", "first_step_at", "phase", "progress_step", "progress_total")


def generation_part(user) -> Iterator[ArchiveFile | Records]:
    rows = []
    images = GeneratedImage.objects.for_user(user).order_by("generation_id", "index")
    by_generation: dict[int, list[GeneratedImage]] = {}
    for image in images:
        by_generation.setdefault(image.generation_id, []).append(image)
    for generation in Generation.objects.for_user(user).order_by("created_at", "pk"):
        row = plain_fields(generation, exclude=_JOB_INTERNALS)
        row["images"] = []
        for image in by_generation.get(generation.pk, []):
            path = f"images/{image.download_name()}"
            yield ArchiveFile(path, image.file.name, modified=image.created_at)
            row["images"].append({"path": path, **plain_fields(image, exclude=("generation",))})
        for name in ("init_image", "mask"):
            stored = getattr(generation, name)
            if stored:
                path = f"inputs/generation-{generation.pk}-{name.replace('_', '-')}{_image_suffix(stored)}"
                yield ArchiveFile(path, stored.name, modified=generation.created_at)
                row[name] = path
        rows.append(row)
    yield Records("generations", rows)
    yield from _prompt_files(user, Lora, "loras")
    yield from _prompt_files(user, Embedding, "embeddings")


def _prompt_files(user, model, key: str) -> Iterator[ArchiveFile | Records]:
    rows = []
    for item in model.objects.filter(owner=user).order_by("name", "pk"):
        path = f"{key}/{safe_name(item.name)}.safetensors"  # named as prompts use it: <lora:name:1>
        yield ArchiveFile(path, item.file.name, modified=item.uploaded_at)
        rows.append({"path": path, **plain_fields(item)})
    yield Records(key, rows)


_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def _image_suffix(stored) -> str:
    """The input's real type, read from its first bytes (stored names end in .upload)."""
    try:
        found = stored_format(stored)
    except OSError:
        return ""
    return _SUFFIXES.get(found or "", "")
