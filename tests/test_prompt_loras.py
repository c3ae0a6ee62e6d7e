"""LoRAs and textual-inversion embeddings named in prompts (issue 16, item 7): uploads checked from
the file's header, private to the uploader unless shared, resolved when a job is created, applied by
the worker for that job only.

The LoRAs and embeddings are built here with seeded random weights on the demo model's UNet (and a
tiny random SDXL's for the family check): random weights test mechanics only (what is applied, at
what weight, and that nothing leaks into the next job), never what a real LoRA draws.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from safetensors.torch import save_file

from generation.models import Embedding, Generation, Lora
from generation.prompt_files import upload_embedding, upload_lora
from generation.services import create_generation
from imagesite.jobs import JobStatus

from .torch_support import offline_hub, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.django_db
FAST = dict(steps=4, width=64, height=64, guidance_scale=7.5, scheduler="euler", seed=11)


def _kohya_lora(path: Path, *, seed: int, unet_folder: Path | None = None, is_xl: bool = False) -> Path:
    """A kohya-layout LoRA (generation.lora_files.write_lora_file) of random weights on a UNet."""
    from generation.lora_files import write_lora_file

    return write_lora_file(path, _random_lora_unet(unet_folder, seed), {}, is_xl=is_xl)


def _random_lora_unet(unet_folder: Path | None, seed: int):
    """A UNet (the demo model's unless `unet_folder`) with a rank-4 peft adapter on its attention
    projections, B matrices seeded random so the LoRA changes the image (mechanics only)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(unet_folder or Path(django_settings.IMAGESITE_MODEL) / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return unet


def _file(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), content_type="application/octet-stream")


def _tensors_file(tmp_path: Path, tensors: dict, name: str = "x.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _raw_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _stored(media_dir: Path, folder: str) -> list[Path]:
    return [p for p in (media_dir / folder).rglob("*") if p.is_file()] if (media_dir / folder).exists() else []


# --- uploads ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("garbage", "not a .safetensors file"),
    ("layout", "layout imagesite reads"),
    ("flux", "transformer model"),
    ("embedding", "embedding, not a LoRA"),
    ("too_big", "at most"),
    ("pt", "as a .safetensors file"),
])
def test_a_lora_upload_that_cannot_be_used_is_a_field_error_and_stores_nothing(owner_client, tmp_path, media_dir, settings, case, message):
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    files = {
        "garbage": lambda: _raw_file(tmp_path / "g.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
        "layout": lambda: _tensors_file(tmp_path, {"model.conv.weight": torch.zeros(2, 2)}),
        "flux": lambda: _tensors_file(tmp_path, {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": down,
                                                 "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": up}),
        "embedding": lambda: _tensors_file(tmp_path, {"emb_params": torch.zeros(2, 768)}),
        "too_big": lambda: _tensors_file(tmp_path, {"lora_unet_a.lora_down.weight": down, "lora_unet_a.lora_up.weight": up}),
        "pt": lambda: _tensors_file(tmp_path, {"lora_unet_a.lora_down.weight": down, "lora_unet_a.lora_up.weight": up}, "x.pt"),
    }
    if case == "too_big":
        settings.IMAGESITE_MAX_LORA_BYTES = 100
    path = files[case]()
    before = _stored(media_dir, "loras")
    response = owner_client.post("/api/v1/loras/", {"file": _file(path), "name": "x"})
    assert response.status_code == 400, response.content
    assert message in " ".join(response.json()["errors"]["file"])
    assert not Lora.objects.exists() and _stored(media_dir, "loras") == before


def test_an_embedding_upload_is_checked_too(owner, tmp_path):
    with pytest.raises(ValidationError) as caught:
        upload_embedding(owner=owner, file=_file(_tensors_file(tmp_path, {"a": torch.zeros(2, 8), "b": torch.zeros(2, 8)})))
    assert "file" in caught.value.message_dict and not Embedding.objects.exists()
    sdxl = upload_embedding(owner=owner, file=_file(_tensors_file(tmp_path, {"clip_l": torch.zeros(3, 768), "clip_g": torch.zeros(3, 1280)}, "xl_emb.safetensors")))
    assert (sdxl.name, sdxl.family, sdxl.vectors) == ("xl_emb", "sdxl", 3)


def test_api_upload_list_and_delete(owner_client, other_client, tmp_path, media_dir, django_capture_on_commit_callbacks):
    path = _kohya_lora(tmp_path / "ink style.safetensors", seed=1)
    response = owner_client.post("/api/v1/loras/", {"file": _file(path)})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["tag"], body["family"], body["layout"], body["mine"]) == ("ink_style", "<lora:ink_style:1>", "sd1", "kohya", True)
    assert [row["name"] for row in owner_client.get("/api/v1/loras/").json()["results"]] == ["ink_style"]
    assert other_client.get("/api/v1/loras/").json()["results"] == []  # private to its uploader
    assert other_client.delete(f"/api/v1/loras/{body['id']}/").status_code == 404
    again = owner_client.post("/api/v1/loras/", {"file": _file(path), "name": "ink_style"})
    assert again.status_code == 400 and "already have" in again.json()["errors"]["name"][0]

    embedding = owner_client.post("/api/v1/embeddings/", {"file": _file(_tensors_file(tmp_path, {"emb_params": torch.zeros(2, 768)}, "grain.safetensors"))})
    assert embedding.status_code == 201 and embedding.json()["vectors"] == 2 and embedding.json()["family"] == "sd1"

    stored = media_dir / Lora.objects.get().file.name
    with django_capture_on_commit_callbacks(execute=True):
        assert owner_client.delete(f"/api/v1/loras/{body['id']}/").status_code == 204
    assert not Lora.objects.exists() and not stored.exists()


def test_the_page_lists_uploads_and_deletes(owner_client, tmp_path):
    path = _kohya_lora(tmp_path / "paper.safetensors", seed=2)
    response = owner_client.post("/loras/lora/upload/", {"lora-file": _file(path), "lora-name": ""}, follow=True)
    assert response.status_code == 200 and "&lt;lora:paper:1&gt;" in response.content.decode()
    bad = owner_client.post("/loras/lora/upload/", {"lora-file": _file(_tensors_file(tmp_path, {"emb_params": torch.zeros(1, 768)}))})
    assert bad.status_code == 400 and "upload it as an embedding" in bad.content.decode()
    row = Lora.objects.get()
    assert owner_client.post(f"/loras/lora/{row.pk}/delete/").status_code == 302 and not Lora.objects.exists()


# --- resolving names at job creation ------------------------------------------------------------------
def test_another_users_private_lora_is_unknown_and_a_shared_one_works(owner, other_user, tmp_path):
    row = upload_lora(owner=owner, file=_file(_kohya_lora(tmp_path / "ink.safetensors", seed=1)))
    with pytest.raises(ValidationError) as caught:
        create_generation(owner=other_user, prompt="a cat <lora:ink:0.8>", **FAST)
    assert "No LoRA called “ink”" in caught.value.message_dict["prompt"][0] and not Generation.objects.exists()
    row.shared = True
    row.save()
    job = create_generation(owner=other_user, prompt="a cat <lora:ink:0.8> <lora:ink:0.2:0.1>", negative_prompt="blurry", **FAST)
    assert [(e["name"], e["kind"], e["id"], e["weight"], e["unet_weight"]) for e in job.loras] == [("ink", "lora", row.pk, 1.0, 0.9)]
    with pytest.raises(ValidationError) as caught:
        create_generation(owner=owner, prompt="a cat", negative_prompt="<lora:nope:1>", **FAST)
    assert "No LoRA called “nope”" in caught.value.message_dict["negative_prompt"][0]


def test_a_lora_or_embedding_of_another_family_is_refused(owner, tmp_path, tiny_model):
    upload_lora(owner=owner, file=_file(_kohya_lora(tmp_path / "xl.safetensors", seed=1, unet_folder=tiny_model("sdxl") / "unet", is_xl=True)))
    upload_embedding(owner=owner, file=_file(_tensors_file(tmp_path, {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, "xlgrain.safetensors")))
    with pytest.raises(ValidationError) as caught:
        create_generation(owner=owner, prompt="a cat <lora:xl:1>, xlgrain", **FAST)
    problems = " ".join(caught.value.message_dict["prompt"])
    assert "“xl” is for SDXL" in problems and "“xlgrain” is for SDXL" in problems


# --- the worker: applied for one job only ------------------------------------------------------------
def _render(owner, prompt: str, negative: str = "") -> tuple[np.ndarray, str]:
    from generation.tasks import run_generation

    job = create_generation(owner=owner, prompt=prompt, negative_prompt=negative, **FAST)
    assert run_generation(job.pk) == "succeeded", Generation.objects.get(pk=job.pk).error
    image = Generation.objects.get(pk=job.pk).images.get()
    with image.file.open("rb") as handle:
        png = Image.open(io.BytesIO(handle.read()))
        png.load()
    return np.asarray(png.convert("RGB"), dtype=np.int16), png.text["parameters"]


def test_lora_tags_and_embeddings_apply_for_their_job_only(owner, tmp_path, settings):
    """On the demo model with random LoRA weights (mechanics only): a tag changes the image, weight 0
    and no tag give the base exactly, two LoRAs at once differ from either, the next job without a
    tag is the base again (nothing leaks), and an embedding's word changes the image."""
    settings.IMAGESITE_PREVIEW_S = 0
    settings.IMAGESITE_CPU_THREADS = 1
    ink = upload_lora(owner=owner, file=_file(_kohya_lora(tmp_path / "ink.safetensors", seed=1)))
    upload_lora(owner=owner, file=_file(_kohya_lora(tmp_path / "paper.safetensors", seed=2)))
    generator = torch.Generator().manual_seed(3)
    upload_embedding(owner=owner, file=_file(_tensors_file(tmp_path, {"emb_params": torch.randn(2, 64, generator=generator) * 2}, "grainy.safetensors")))
    prompt = "a red circle on a blue background"

    base, _ = _render(owner, prompt)
    one, parameters = _render(owner, f"{prompt} <lora:ink:1>")
    assert np.abs(one - base).mean() > 1.0
    assert parameters.startswith(f"{prompt} <lora:ink:1>\n") and f'Lora hashes: "ink: {ink.sha256[:10]}"' in parameters
    assert np.array_equal(_render(owner, f"{prompt} <lora:ink:0>")[0], base)
    both, parameters = _render(owner, f"{prompt} <lora:ink:1> <lora:paper:0.8>")
    assert np.abs(both - one).mean() > 1.0 and "ink: " in parameters and "paper: " in parameters
    assert np.array_equal(_render(owner, prompt)[0], base)  # the next job: the base exactly
    grainy, _ = _render(owner, f"{prompt}, Grainy")
    assert np.abs(grainy - base).mean() > 0.5
    assert np.array_equal(_render(owner, prompt)[0], base)  # the embedding's token is gone again


def test_a_subject_is_found_by_its_token_and_needs_a_trained_lora(owner):
    from training.models import Subject

    Subject.objects.create(owner=owner, name="Rex", token="sks", class_noun="dog")
    with pytest.raises(ValidationError) as caught:
        create_generation(owner=owner, prompt="a photo of sks dog <lora:sks:0.7>", **FAST)
    assert "Your subject “Rex” (sks) has no trained LoRA yet" in caught.value.message_dict["prompt"][0]


def test_png_lora_hashes_name_each_lora_as_the_prompt_does(tmp_path):
    """An uploaded LoRA's stored sha256; a subject's file hashed in the worker; a full fine-tune has none."""
    import hashlib

    from generation.adapters import Adapter
    from generation.prompt_files import lora_hashes

    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"lora bytes")
    adapters = [Adapter(kind="lora", path=str(lora), key="run-1", name="sks"),
                Adapter(kind="lora", path="unused", key="lora-2", name="ink", sha256="ab" * 32),
                Adapter(kind="full", path=str(tmp_path), key="run-3", name="rex")]
    assert lora_hashes(adapters) == {"sks": hashlib.sha256(b"lora bytes").hexdigest()[:10], "ink": "ab" * 5}


def _diffusers_lora(folder: Path, *, seed: int) -> Path:
    """A LoRA in diffusers' own (peft) layout, as a diffusers training script saves it: a peft adapter on
    the demo model's UNet (random weights: mechanics only) written by `save_lora_weights`, so its keys
    are `unet.….lora_A.weight` / `.lora_B.weight`."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    unet = _random_lora_unet(None, seed)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet), weight_name="watercolour.safetensors")
    return folder / "watercolour.safetensors"


def test_a_lora_saved_by_diffusers_is_uploaded_and_drawn_with(owner, owner_client, tmp_path, settings):
    """The diffusers/peft layout (not kohya's) on the demo model, random weights (mechanics only): the
    upload is read as that layout, its tag changes the image, and the next job is the base again."""
    from safetensors import safe_open

    settings.IMAGESITE_PREVIEW_S = 0
    settings.IMAGESITE_CPU_THREADS = 1
    path = _diffusers_lora(tmp_path, seed=4)
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys), keys[:3]
    response = owner_client.post("/api/v1/loras/", {"file": _file(path)})
    assert response.status_code == 201, response.content
    # The demo model's text width (not 768/1024/2048) names no family: such a file fits any base.
    assert (response.json()["name"], response.json()["layout"], response.json()["family"]) == ("watercolour", "peft", "")
    to_k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    for width, family in ((768, "sd1"), (1024, "sd2")):  # a real model's cross-attention width tells its family
        real = _tensors_file(tmp_path, {f"{to_k}.lora_A.weight": torch.zeros(4, width), f"{to_k}.lora_B.weight": torch.zeros(320, 4)}, f"real{width}.safetensors")
        assert upload_lora(owner=owner, file=_file(real)).family == family

    prompt = "a red circle on a blue background"
    base, _ = _render(owner, prompt)
    painted, parameters = _render(owner, f"{prompt} <lora:watercolour:1>")
    assert np.abs(painted - base).mean() > 1.0 and "Lora hashes: \"watercolour: " in parameters
    assert np.array_equal(_render(owner, prompt)[0], base)
