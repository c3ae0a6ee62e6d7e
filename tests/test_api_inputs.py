"""img2img, inpainting and hires fix through /api/v1/generations/: multipart uploads, a gallery image by
id, the rules' field errors (nothing stored, nothing queued) and the private input/mask URLs."""
from __future__ import annotations

import io

import pytest
from django_q.models import OrmQ
from PIL import Image

from generation.models import Generation

from .api_support import assert_error, other_api, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/generations/"


def png(size=(64, 64), colour=(30, 70, 225), mode="RGB", name="input.png") -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = name
    return buffer


def stored_files(media_dir) -> list:
    root = media_dir / "inputs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_multipart_inpainting_round_trip(owner_api, other_api, media_dir):
    before = stored_files(media_dir)
    response = owner_api.post(URL, {"prompt": "a yellow star on a blue background", "init_image": png((72, 40)),
                                    "mask": png((72, 40), 255, "L", "mask.png"), "strength": "0.9", "mask_blur": "2"},
                              format="multipart")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["width"], body["height"]) == (72, 40)  # the input's size, already a multiple of 8
    assert body["strength"] == 0.9 and body["mask_blur"] == 2 and body["hires_scale"] == 1.0 and body["source_image"] is None
    assert OrmQ.objects.count() == 1 and len(stored_files(media_dir)) == len(before) + 2
    for key, mode in (("init_image_url", "RGB"), ("mask_url", "L")):
        got = owner_api.get(body[key])
        assert got.status_code == 200 and got["Content-Type"] == "image/png" and "private" in got["Cache-Control"]
        assert Image.open(io.BytesIO(b"".join(got.streaming_content))).mode == mode
        assert other_api.get(body[key]).status_code == 404
    assert owner_api.delete(body["url"]).status_code == 204
    assert stored_files(media_dir) == before  # input and mask go with the job


def test_json_with_a_gallery_image_copies_its_file(owner, owner_api, other_api):
    source = make_image(owner)
    body = owner_api.post(URL, {"prompt": "a red circle", "source_image": source.pk, "strength": 0.3, "width": 128, "height": 96},
                          format="json").json()
    job = Generation.objects.get(pk=body["id"])
    assert body["source_image"] == source.pk and job.init_image.name != source.file.name
    assert job.init_image.read() == source.file.open("rb").read()
    assert other_api.post(URL, {"prompt": "x", "source_image": source.pk}, format="json").status_code == 400


def test_hires_fix_settings_are_taken_and_returned(owner_api):
    body = owner_api.post(URL, {"prompt": "a red circle", "width": 64, "height": 64, "hires_scale": 2, "hires_upscaler": "lanczos",
                                "hires_strength": 0.5, "hires_steps": 6}, format="json").json()
    assert (body["hires_scale"], body["hires_upscaler"], body["hires_strength"], body["hires_steps"]) == (2.0, "lanczos", 0.5, 6)
    assert body["init_image_url"] is None and body["mask_url"] is None


@pytest.mark.parametrize("data, field", [
    ({"mask": "mask"}, "mask"),  # a mask without an input
    ({"init_image": "input", "mask": "small mask"}, "mask"),
    ({"init_image": "text"}, "init_image"),
    ({"init_image": "input", "strength": "1.5"}, "strength"),
    ({"init_image": "input", "strength": "0.01"}, "strength"),  # int(steps × 0.01) = 0 steps
    ({"hires_scale": "3"}, "hires_scale"),  # 192 px: over the demo model's 128
    ({"init_image": "input", "hires_scale": "2"}, "hires_scale"),
    ({"hires_upscaler": "esrgan"}, "hires_upscaler"),
])
def test_bad_inputs_are_400_by_field_with_nothing_stored_or_queued(owner_api, media_dir, data, field):
    files = {"input": png((64, 64)), "mask": png((64, 64), 255, "L"), "small mask": png((32, 32), 255, "L"),
             "text": io.BytesIO(b"just some text, not an image")}
    body = {"prompt": "a red circle", **{k: files.get(v, v) for k, v in data.items()}}
    before = stored_files(media_dir)
    assert_error(owner_api.post(URL, body, format="multipart"), 400, field)
    assert Generation.objects.count() == 0 and OrmQ.objects.count() == 0 and stored_files(media_dir) == before


def test_the_schema_documents_the_new_fields(owner_api):
    schema = owner_api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create = schema["paths"][URL]["post"]
    assert "`init_image` (multipart/form-data)" in create["description"]
    fields = schema["components"]["schemas"]["GenerationJsonRequest"]["properties"]
    assert {"source_image", "strength", "mask_blur", "hires_scale", "hires_upscaler", "hires_strength", "hires_steps"} <= set(fields)
    # Files are multipart only: the JSON body does not offer them (api/schema.py keeps JSON alone where both exist).
    assert not {"init_image", "mask"} & set(fields)
    assert {"init_image_url", "mask_url", "strength"} <= set(schema["components"]["schemas"]["Generation"]["properties"])
    assert f"{URL}{{id}}/input/" in schema["paths"] and f"{URL}{{id}}/mask/" in schema["paths"]
