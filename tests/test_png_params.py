"""The PNG's `parameters` name the subject an image was made with: the prompt as typed, then
AUTOMATIC1111's `Lora hashes` (civitai reads it) and our own `Subject`, in a form A1111's infotext
parser reads back. Torch-free: generation.png_params."""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass

from PIL import Image

from generation.png_params import a1111_parameters, encode_for_gallery, lora_short_hash

# AUTOMATIC1111's modules/infotext_utils.py reads the last line's keys with this pattern (its
# unquote() json-loads a quoted value).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_read(text: str) -> dict[str, str]:
    *_, last = text.split("\n")
    return {key: json.loads(value) if value.startswith('"') else value for key, value in A1111_PARAM.findall(last)}


@dataclass(frozen=True)
class Settings:  # what RenderSettings carries (that class lives in the torch-side pipeline)
    prompt: str = "a photo of sks shape"
    negative_prompt: str = ""
    seed: int = 740
    steps: int = 8
    guidance_scale: float = 7.5
    width: int = 64
    height: int = 64
    scheduler: str = "dpmpp_2m"
    num_images: int = 2

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


def test_without_a_subject_the_text_is_as_before():
    assert a1111_parameters(Settings(), 740, "demo") == (
        "a photo of sks shape\nSteps: 8, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 740, Size: 64x64, Model: demo")


def test_a_subject_adds_lora_hashes_and_subject_and_keeps_the_prompt():
    text = a1111_parameters(Settings(), 741, "demo", subject_name="Checker", lora_hashes={"sks": "0123456789"})
    assert text.split("\n")[0] == "a photo of sks shape"
    assert text.endswith(', Model: demo, Lora hashes: "sks: 0123456789", Subject: Checker')
    keys = a1111_read(text)
    assert keys["Lora hashes"] == "sks: 0123456789" and keys["Subject"] == "Checker" and keys["Seed"] == "741"


def test_a_name_with_a_comma_is_quoted_and_reads_back_whole():
    text = a1111_parameters(Settings(), 1, "demo, v2", subject_name='Mia, "the cat"')
    keys = a1111_read(text)
    assert keys["Subject"] == 'Mia, "the cat"' and keys["Model"] == "demo, v2" and keys["Size"] == "64x64"


def test_every_image_of_a_job_carries_the_subject_with_its_own_seed():
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))]
    pngs = encode_for_gallery(images, Settings(), "demo", subject_name="Checker", lora_hashes={"sks": "abcdef0123"})
    texts = [Image.open(io.BytesIO(png)).text["parameters"] for png, _ in pngs]
    assert [a1111_read(t)["Seed"] for t in texts] == ["740", "741"]
    assert all(a1111_read(t)["Subject"] == "Checker" for t in texts)


def test_the_short_hash_is_the_files_sha256_first_ten_hex(tmp_path):
    lora = tmp_path / "sks.safetensors"
    lora.write_bytes(b"x" * 3_000_000)
    assert lora_short_hash(str(lora)) == hashlib.sha256(lora.read_bytes()).hexdigest()[:10]
    lora.write_bytes(b"y" * 10)  # a new file at that path is hashed again
    assert lora_short_hash(str(lora)) == hashlib.sha256(b"y" * 10).hexdigest()[:10]

