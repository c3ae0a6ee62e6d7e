"""A job's stored input image and mask, read on the worker (img2img and inpainting).

The web request stored the uploads as they came, judged from their headers only; here they are checked
again, decoded, turned upright and cleaned (generation.inputs), and the raw upload is replaced by the
clean PNG once (no EXIF, GPS or other metadata kept at rest; a retry finds it done).
"""
from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from .errors import GenerationError
from .inputs import InputRejected, decode_input, decode_mask, encode_clean_png
from .models import Generation


def load_job_inputs(job: Generation):
    """The job's decoded input and mask as pipeline_modes.ImageInputs (both None for text-to-image).
    A file that fails the checks is a GenerationError with the reason."""
    from .pipeline_modes import ImageInputs

    if not job.init_image:
        return ImageInputs()
    try:
        image = decode_input(_read(job.init_image))
        mask = decode_mask(_read(job.mask)) if job.mask else None
    except InputRejected as exc:
        raise GenerationError(str(exc)) from None
    if mask is not None and mask.size != image.size:
        raise GenerationError(f"The mask is {mask.size[0]}×{mask.size[1]} pixels but the input image {image.size[0]}×{image.size[1]}.")
    _keep_clean(job, "init_image", image)
    if mask is not None:
        _keep_clean(job, "mask", mask)
    return ImageInputs(image, mask)


def _read(field_file) -> bytes:
    with field_file.storage.open(field_file.name, "rb") as handle:
        return handle.read()


def _keep_clean(job: Generation, field: str, image) -> None:
    """Store `image` as `field`'s clean PNG in place of the raw upload. The row is switched by a
    conditional update, so a job deleted (or changed) meanwhile keeps no stray file."""
    old = getattr(job, field).name
    if old.endswith(".png"):
        return
    new = default_storage.save(old.rsplit(".", 1)[0] + ".png", ContentFile(encode_clean_png(image)))
    if Generation.objects.filter(pk=job.pk, **{field: old}).update(**{field: new}):
        default_storage.delete(old)
        getattr(job, field).name = new
    else:
        default_storage.delete(new)
