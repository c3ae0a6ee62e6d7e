"""An operator's inpainting checkpoint (a 9-channel UNet) as a base model (issue 16, item 4): offered in
the catalog as an inpainting model, loaded by the worker with the inpaint pipeline class, and used for
an inpaint job through the real task, as a diffusers folder and as a single file. Text-to-image on it
works too (A1111 allows it): the renderer conditions it on a grey image under a full mask.

The model is tests/tiny_models.py's SD 1.x with its UNet's first convolution widened to 9 input
channels, seeded random weights: these tests check mechanics (detection, loading, the job's path,
the pixels kept outside the mask), never image quality."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from generation import catalog, pipeline, tasks
from generation.models import BaseModel, Generation
from generation.pipeline_modes import blur_mask, fit
from generation.services import create_generation
from imagesite.jobs import JobStatus

from .api_support import owner_api  # noqa: F401  (fixture)
from .test_studio_modes import disc_mask, red_circle
from .torch_support import one_torch_thread  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.django_db


def build_inpainting_model(base: Path, folder: Path) -> Path:
    """`base` (a tiny SD 1.x folder) copied to `folder` with a 9-channel UNet: conv_in widened to take
    the mask and the masked image's latents beside the noisy latents, as runwayml's SD 1.5 inpainting
    was made from SD 1.2. Seeded random weights for the new channels: mechanics only."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(base, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    narrow = unet.conv_in
    wide = torch.nn.Conv2d(9, narrow.out_channels, narrow.kernel_size, padding=narrow.padding)
    torch.manual_seed(0)
    with torch.no_grad():
        wide.weight.normal_(0, 0.02)
        wide.weight[:, :4] = narrow.weight
        wide.bias.copy_(narrow.bias)
    unet.conv_in = wide
    unet.register_to_config(in_channels=9)
    unet.save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="module")
def inpainting_models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """A models folder holding the 9-channel model twice: as a diffusers folder and as an
    original-layout .safetensors (what civitai and A1111 users have)."""
    from generation.checkpoint_convert import save_single_file

    folder = tmp_path_factory.mktemp("inpainting-models")
    model = build_inpainting_model(tiny_model("sd1"), folder / "tiny-inpainting")
    single = save_single_file(model, folder / "tiny-inpainting-file.safetensors")
    return {"folder": model, "single_file": single}


@pytest.fixture
def offered(settings, inpainting_models, tiny_model) -> dict[str, BaseModel]:
    settings.IMAGESITE_MODELS_DIR = str(inpainting_models["folder"].parent)
    # The single file is built with the tiny SD 1.x's configs (the shipped ones describe the real size).
    settings.IMAGESITE_MODEL_CONFIG = str(tiny_model("sd1"))
    settings.IMAGESITE_PREVIEW_S = 0
    settings.IMAGESITE_CPU_THREADS = 1
    catalog.refresh_if_changed()
    return {kind: BaseModel.objects.get(path=str(path)) for kind, path in inpainting_models.items()}


def png_upload(image: Image.Image, name: str) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue())


def image_of(generation: Generation) -> np.ndarray:
    with generation.images.get().file.open("rb") as handle:
        return np.asarray(Image.open(io.BytesIO(handle.read())).convert("RGB"))


def test_the_catalog_offers_it_as_an_inpainting_model_of_its_family(offered, owner_client, owner_api):
    for row in offered.values():
        assert row.is_offered and not row.problem
        assert (row.family, row.family_label) == ("sd1", "Stable Diffusion 1.x, inpainting model")
        assert row.info().inpainting
    page = owner_client.get(reverse("generation-new")).content.decode()
    assert "tiny-inpainting · Stable Diffusion 1.x, inpainting model" in page
    listed = {m["name"]: m for m in owner_api.get("/api/v1/models/").json()}
    assert listed["tiny-inpainting-file.safetensors"]["family_label"] == "Stable Diffusion 1.x, inpainting model"
    assert listed["tiny-inpainting"]["family"] == "sd1"


@pytest.mark.parametrize("kind", ["folder", "single_file"])
def test_an_inpaint_job_on_it_keeps_the_unmasked_pixels(owner, offered, kind):
    """The real task on the 9-channel base: loaded with the inpaint pipeline class (a single file with
    the family's configs and a 9-channel UNet), the job succeeds, and outside the blurred mask every
    pixel is the input's own."""
    source, mask = red_circle(), disc_mask((24, 24, 40, 40))
    job = create_generation(owner=owner, prompt="a yellow star on a blue background", seed=5, steps=2, base_model=offered[kind],
                            init_image=png_upload(source, "in.png"), mask=png_upload(mask, "mask.png"), strength=1.0, mask_blur=2)
    assert tasks.run_generation(job.pk) == "succeeded", Generation.objects.get(pk=job.pk).error
    job.refresh_from_db()
    renderer = pipeline.get_renderer(offered[kind].worker_source())  # the warm one the task used
    assert type(renderer.pipe).__name__ == "StableDiffusionInpaintPipeline" and renderer.pipe.unet.config.in_channels == 9
    assert renderer.family.inpainting and renderer.modes.inpainting_model
    # A single file has no folder configs to give a native size: its family's (512 px) applies, so the
    # 64 px input is drawn at the family's smallest size, the input and mask resized to it.
    size = (job.width, job.height)
    assert size == ((64, 64) if kind == "folder" else (256, 256))
    out, kept = image_of(job), np.asarray(fit(source, size))
    outside = np.asarray(fit(blur_mask(mask, 2), size)) == 0
    assert out.shape == (*size, 3) and np.array_equal(out[outside], kept[outside])
    assert not np.array_equal(out[~outside], kept[~outside])  # the masked centre was redrawn


def test_text_to_image_on_it_works_as_in_a1111(owner, offered):
    """No input: the model draws under a full mask over a grey image (A1111's conditioning)."""
    job = create_generation(owner=owner, prompt="a red circle", seed=5, steps=2, base_model=offered["folder"])
    assert tasks.run_generation(job.pk) == "succeeded", Generation.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and image_of(job).shape == (64, 64, 3)


def test_text_to_image_jobs_batched_on_it_match_their_solo_renders(offered):
    """Compatible text-to-image jobs share one pipeline call (generation.batching); on an inpainting
    base that call needs the same grey image under a full mask as a solo job."""
    from generation.batching import BatchItem, render_batch
    from generation.pipeline import RenderSettings

    renderer = pipeline.get_renderer(offered["folder"].worker_source())
    common = dict(negative_prompt="", steps=2, guidance_scale=3.0, width=64, height=64, scheduler="dpmpp_2m")
    jobs = [RenderSettings(prompt="a red circle", seed=1, **common), RenderSettings(prompt="a blue square", seed=7, num_images=2, **common)]
    batched = render_batch(renderer, [BatchItem(s) for s in jobs])
    for images, s in zip(batched, jobs):
        solo = renderer.render(s)
        assert len(images) == len(solo) == s.num_images
        # batched matrix products differ in the last bits; random tiny weights amplify that (measured: 4 levels)
        assert all(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 8 for a, b in zip(images, solo))


def test_a_lora_of_its_family_applies_on_it(owner, offered, inpainting_models, tmp_path):
    """A LoRA made for SD 1.x (on the attention layers, which the 9-channel UNet shares) is offered and
    applied on the inpainting base: the tag changes the image; the next job without it is the base's."""
    from generation.prompt_files import upload_lora

    from .test_prompt_loras import _file, _kohya_lora

    lora = _kohya_lora(tmp_path / "ink.safetensors", seed=1, unet_folder=inpainting_models["folder"] / "unet")
    upload_lora(owner=owner, file=_file(lora))
    images = []
    for prompt in ("a red circle", "a red circle <lora:ink:1>", "a red circle"):
        job = create_generation(owner=owner, prompt=prompt, seed=5, steps=2, base_model=offered["folder"])
        assert tasks.run_generation(job.pk) == "succeeded", Generation.objects.get(pk=job.pk).error
        images.append(image_of(job).astype(np.int16))
    assert np.abs(images[1] - images[0]).mean() > 1 and np.array_equal(images[2], images[0])


def test_a_subject_is_not_trained_on_it(owner, offered):
    """DreamBooth trains a text-to-image UNet (4 latent channels in); an inpainting base is refused on
    its field, before anything is queued, and the Train form does not offer it."""
    from django.core.exceptions import ValidationError

    from training.forms import TrainingForm
    from training.models import TrainingRun
    from training.services import create_subject, start_training

    subject = create_subject(owner=owner, name="Rex", class_noun="dog")
    with pytest.raises(ValidationError) as refused:
        start_training(subject=subject, base_model=offered["folder"])
    assert "inpainting model" in refused.value.message_dict["base_model"][0]
    assert not TrainingRun.objects.exists()
    trainable = TrainingForm().fields["base_model"].queryset
    assert trainable.exists() and not trainable.filter(pk=offered["folder"].pk).exists()
