"""One safetensors header parser serves checkpoint detection and the LoRA/embedding upload checks:
the same faults are refused by both, each in its own words, and the upload side keeps its smaller
header limit. Torch-free: headers are written by hand."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from generation.checkpoint_keys import read_safetensors_keys
from generation.errors import GenerationError
from generation.prompt_file_checks import PromptFileError, read_header
from generation.safetensors_header import HeaderError, read_safetensors_header


def _file(table: dict, data: int = 0) -> bytes:
    header = json.dumps(table).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * data


GOOD = {"__metadata__": {"format": "pt"}, "a": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(("content", "problem"), [
    (b"\x00" * 4, "short"),
    (struct.pack("<Q", 10**12) + b"{}", "length"),
    (struct.pack("<Q", 5) + b"hello", "json"),
    (_file([1, 2]), "shape"),
    (_file({"__metadata__": ["not", "a", "table"]}), "shape"),
    (_file({"a": {"dtype": "F16", "shape": [2], "data_offsets": [8, 0]}}, 8), "entry"),
    (_file({"a": {"dtype": ["F16"], "shape": [2], "data_offsets": [0, 4]}}, 4), "entry"),
    (_file({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0]}}), "entry"),
    (_file(GOOD, 4), "truncated"),
])
def test_both_callers_refuse_the_same_faults(tmp_path: Path, content: bytes, problem: str):
    with pytest.raises(HeaderError) as caught:
        read_safetensors_header(io.BytesIO(content), len(content))
    assert caught.value.problem == problem
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(GenerationError, match=r"x.safetensors is damaged"):
        read_safetensors_keys(path)
    with pytest.raises(PromptFileError):
        read_header(io.BytesIO(content), len(content))


def test_a_good_header_reads_the_same_for_both(tmp_path: Path):
    content = _file(GOOD, 8)
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    keys = read_safetensors_keys(path)
    header = read_header(io.BytesIO(content), len(content))
    assert keys.keys == {"a"} and keys.shapes == header.shapes == {"a": (2, 2)}
    assert keys.metadata == header.metadata == {"format": "pt"} and keys.precision == "float16"


def test_uploads_keep_the_smaller_header_limit():
    content = _file({"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2], "pad": "x" * 17 * 2**20}}, 2)
    assert read_safetensors_header(io.BytesIO(content), len(content)).shapes == {"a": (1,)}
    with pytest.raises(PromptFileError, match="header length is impossible"):
        read_header(io.BytesIO(content), len(content))
