"""Settings read back from PNGs that AUTOMATIC1111, ComfyUI, InvokeAI and imagesite write (issue 16, item 8).
The sample files are built here the way each tool writes its text chunks."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from generation.png_params import a1111_parameters, encode_png
from generation.png_settings import PngSettingsError, settings_from_png

from .api_support import anon_api, assert_error, owner_api  # noqa: F401  (fixtures)

URL = "/api/v1/png-info/"

A1111 = ("a castle on a hill, (oil painting:1.2), <lora:oil_paint:0.8>\nNegative prompt: blurry, lowres\n"
         "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: abc123, "
         "Model: dreamshaper_8, Clip skip: 2")

COMFY_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 20, "cfg": 7.0, "sampler_name": "euler_ancestral",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["10", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5-pruned-emaonly.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "pixel_art.safetensors", "strength_model": 0.7,
                                                   "strength_clip": 0.7, "model": ["4", 0], "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 448, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["10", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}

INVOKEAI = {"generation_mode": "txt2img", "positive_prompt": "a red fox in snow", "negative_prompt": "cartoon",
            "width": 768, "height": 512, "seed": 99, "steps": 30, "cfg_scale": 5.5, "scheduler": "euler",
            "model": {"key": "k1", "hash": "blake3:00", "name": "Juggernaut XL", "base": "sdxl", "type": "main"}}


def _png(chunks: dict[str, str], *, fmt: str = "PNG") -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, fmt, pnginfo=info)
    return buffer.getvalue()


def _comfy_links(graph: dict) -> list:
    """The UI workflow's `links` ([id, from node, from slot, to node, to slot, type]) for the API graph."""
    links = []
    for to_id, node in graph.items():
        for slot, value in enumerate(node["inputs"].values()):
            if isinstance(value, list):
                links.append([len(links) + 1, int(value[0]), value[1], int(to_id), slot, "*"])
    return links


def _comfy_png() -> bytes:
    workflow = {"nodes": [], "links": _comfy_links(COMFY_GRAPH)}
    return _png({"prompt": json.dumps(COMFY_GRAPH), "workflow": json.dumps(workflow)})


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Reading settings must never decode the image (it runs inside a web request)."""
    def refuse(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_automatic1111_fills_every_field_and_notes_the_rest(no_pixel_decoding):
    found = settings_from_png(_png({"parameters": A1111}))
    assert found["generator"] == "AUTOMATIC1111"
    assert found["prompt"] == "a castle on a hill, (oil painting:1.2), <lora:oil_paint:0.8>"
    assert found["negative_prompt"] == "blurry, lowres"
    assert (found["seed"], found["steps"], found["guidance_scale"]) == (1234, 28, 6.5)
    assert (found["width"], found["height"], found["scheduler"], found["model"]) == (512, 768, "dpmpp_2m", "dreamshaper_8")
    assert any("Karras" in note for note in found["notes"])
    assert any("Clip skip" in note for note in found["notes"])


@pytest.mark.parametrize("sampler, key", [("DPM++ 2M", "dpmpp_2m"), ("Euler a", "euler_a"), ("Euler", "euler"),
                                          ("DDIM", "ddim"), ("PLMS", "pndm")])
def test_automatic1111_sampler_names_map_to_our_schedulers(sampler, key):
    text = f"a cat\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 1, Size: 64x64"
    found = settings_from_png(_png({"parameters": text}))
    assert found["scheduler"] == key and found["notes"] == []


def test_unknown_sampler_is_left_out_with_a_note():
    found = settings_from_png(_png({"parameters": "a cat\nSteps: 20, Sampler: UniPC, CFG scale: 7, Seed: 1, Size: 64x64"}))
    assert "scheduler" not in found
    assert any("UniPC" in note for note in found["notes"])


def test_comfyui_graph_fills_the_form_with_its_lora_as_a_tag(no_pixel_decoding):
    found = settings_from_png(_comfy_png())
    assert found["generator"] == "ComfyUI"
    assert found["prompt"] == "a lighthouse at dusk, <lora:pixel_art:0.7>"
    assert found["negative_prompt"] == "text, watermark"
    assert (found["seed"], found["steps"], found["guidance_scale"], found["scheduler"]) == (42, 20, 7.0, "euler_a")
    assert (found["width"], found["height"], found["model"]) == (640, 448, "v1-5-pruned-emaonly")


def test_invokeai_metadata_fills_the_form(no_pixel_decoding):
    found = settings_from_png(_png({"invokeai_metadata": json.dumps(INVOKEAI)}))
    assert found["generator"] == "InvokeAI"
    assert (found["prompt"], found["negative_prompt"]) == ("a red fox in snow", "cartoon")
    assert (found["seed"], found["steps"], found["guidance_scale"], found["scheduler"]) == (99, 30, 5.5, "euler")
    assert (found["width"], found["height"], found["model"]) == (768, 512, "Juggernaut XL")


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler_a", "euler", "ddim", "pndm"])
def test_our_own_png_round_trips_exactly(scheduler, no_pixel_decoding):
    settings = SimpleNamespace(prompt="a red circle, on blue: (bright:1.3)", negative_prompt="blurry, dark", steps=17,
                               guidance_scale=7.5, width=96, height=64, scheduler=scheduler)
    text = a1111_parameters(settings, 4242, "my model, v2", subject_name="Rex", lora_hashes={"sks": "0123456789"})
    found = settings_from_png(encode_png(Image.new("RGB", (96, 64)), text))
    assert found == {"generator": "AUTOMATIC1111", "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
                     "seed": 4242, "steps": 17, "guidance_scale": 7.5, "width": 96, "height": 64, "scheduler": scheduler,
                     "model": "my model, v2", "subject_name": "Rex", "lora_hashes": {"sks": "0123456789"}, "notes": []}


def test_lora_hashes_of_several_loras_are_one_key(no_pixel_decoding):
    """A1111 quotes `Lora hashes` ("a: h1, b: h2"); the comma inside must not make `b` a key of its own."""
    text = ("a <lora:ink:0.8> cat <lora:sks:1>\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
            'Lora hashes: "ink: abcdef0123, sks: 0123456789"')
    found = settings_from_png(_png({"parameters": text}))
    assert found["lora_hashes"] == {"ink": "abcdef0123", "sks": "0123456789"} and found["notes"] == []


@pytest.mark.parametrize("data, message", [
    (b"", "not a PNG"),
    (_png({}, fmt="JPEG"), "not a PNG"),
    (_png({}), "no metadata"),
    (_png({"Software": "GIMP"}), "no generation settings"),
    (b"\x89PNG\r\n\x1a\n" + b"garbage", "cannot be read"),
])
def test_files_without_settings_are_refused_readably(data, message):
    with pytest.raises(PngSettingsError, match=message):
        settings_from_png(data)


def test_too_big_file_is_refused(monkeypatch):
    monkeypatch.setattr("generation.png_settings.MAX_PNG_BYTES", 100)
    with pytest.raises(PngSettingsError, match="over"):
        settings_from_png(_png({"parameters": A1111}))


# --- the API --------------------------------------------------------------------------------------
def _upload(data: bytes, name: str = "sample.png"):
    return {"image": io.BytesIO(data) if not name else _named(data, name)}


def _named(data: bytes, name: str):
    handle = io.BytesIO(data)
    handle.name = name
    return handle


@pytest.mark.django_db
def test_api_reads_settings(owner_api):
    response = owner_api.post(URL, _upload(_comfy_png()), format="multipart")
    assert response.status_code == 200, response.content
    assert response.json()["seed"] == 42 and response.json()["notes"] == []


@pytest.mark.django_db
@pytest.mark.parametrize("data", [_png({}, fmt="JPEG"), _png({})])
def test_api_refuses_a_jpeg_or_bare_png_on_the_image_field(owner_api, data):
    assert_error(owner_api.post(URL, _upload(data, "x.jpg"), format="multipart"), 400, "image")


@pytest.mark.django_db
def test_api_missing_file_is_a_400_on_image(owner_api):
    assert_error(owner_api.post(URL, {}, format="multipart"), 400, "image")


@pytest.mark.django_db
def test_api_requires_login(anon_api):
    assert anon_api.post(URL, _upload(_comfy_png()), format="multipart").status_code == 401


@pytest.mark.django_db
def test_api_wrong_method_is_405(owner_api):
    assert owner_api.get(URL).status_code == 405


@pytest.mark.django_db
def test_page_session_can_use_it_with_the_csrf_token(owner_client):
    response = owner_client.post(URL, {"image": _named(_png({"parameters": A1111}), "a.png")})
    assert response.status_code == 200 and response.json()["steps"] == 28


# --- the subject the image was made with (issue 18) --------------------------------------------------
def _subject_png(*, prompt: str = "a photo of sks dog", subject: str = "Rex", token: str = "sks") -> bytes:
    settings = SimpleNamespace(prompt=prompt, negative_prompt="", steps=12, guidance_scale=7.0, width=64, height=64, scheduler="euler")
    return encode_png(Image.new("RGB", (64, 64)), a1111_parameters(settings, 7, "demo", subject_name=subject, lora_hashes={token: "0123456789"}))


def _trained(owner, name: str, token: str):
    from imagesite.jobs import JobStatus
    from training.models import Subject, TrainingRun

    subject = Subject.objects.create(owner=owner, name=name, token=token, class_noun="dog")
    TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors")
    return subject


@pytest.mark.django_db
def test_our_png_attaches_the_readers_subject_of_that_name(owner_api, owner, other_user):
    _trained(other_user, "Rex", "sks")  # another user's Rex is not theirs to attach
    _trained(owner, "Checkers", "sks")  # the same token on another subject is not the one named
    rex = _trained(owner, "Rex", "rxq")  # renamed token: the name decides
    body = owner_api.post(URL, _upload(_subject_png()), format="multipart").json()
    assert (body["subject"], body["subject_name"], body["prompt"]) == (rex.pk, "Rex", "a photo of sks dog")
    assert any("“Rex” (rxq) is attached" in note for note in body["notes"])


@pytest.mark.django_db
def test_a_subject_the_reader_does_not_have_is_a_note(owner_api, owner, other_user):
    _trained(other_user, "Rex", "sks")
    from training.models import Subject

    Subject.objects.create(owner=owner, name="Rex", token="sks", class_noun="dog")  # not trained: not usable
    body = owner_api.post(URL, _upload(_subject_png()), format="multipart").json()
    assert "subject" not in body and body["subject_name"] == "Rex"
    assert "Made with the subject “Rex”, which you do not have: it is not attached." in body["notes"]


@pytest.mark.django_db
def test_a1111_lora_hashes_attach_by_token_only_when_no_tag_carries_it(owner_api, owner):
    rex = _trained(owner, "Rex", "sks")
    untagged = "a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Lora hashes: \"sks: 0123456789\""
    assert owner_api.post(URL, _upload(_png({"parameters": untagged})), format="multipart").json()["subject"] == rex.pk
    tagged = untagged.replace("a dog", "a <lora:sks:0.8> dog")  # the tag finds the subject when the form is sent
    body = owner_api.post(URL, _upload(_png({"parameters": tagged})), format="multipart").json()
    assert "subject" not in body and body["notes"] == []
    missing = untagged.replace("sks: ", "ghost: ")
    body = owner_api.post(URL, _upload(_png({"parameters": missing})), format="multipart").json()
    assert "subject" not in body and body["notes"] == ["Made with the LoRA “ghost” (not in the prompt), which you do not have."]
