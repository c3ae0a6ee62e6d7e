"""The JSON header of a `.safetensors` file, read without torch: an 8-byte little-endian length, then
a JSON table naming every tensor with its dtype, shape and byte range (`data_offsets`, counted from the
end of the header), plus an optional `__metadata__` table of strings; the tensors follow.

One parser for every caller that reads a header: checkpoint detection (`checkpoint_keys`) and the
LoRA/embedding upload checks (`prompt_file_checks`). Each turns a `HeaderError` into its own words.
Torch-free: the web process reads uploads with it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class HeaderError(ValueError):
    """Why a header cannot be read. `problem` says which check failed, so each caller can word it:
    "short" | "length" | "json" | "shape" | "entry" (with `key`) | "truncated".
    The message is a short clause ("its header is not JSON")."""

    def __init__(self, problem: str, why: str, *, key: str = "") -> None:
        super().__init__(why)
        self.problem, self.key = problem, key


@dataclass(frozen=True)
class SafetensorsHeader:
    shapes: dict[str, tuple[int, ...]]  # every tensor's name -> shape ("__metadata__" left out)
    dtypes: dict[str, str]  # "F16", "BF16", "F32", "I64" …
    metadata: dict[str, str]


def read_safetensors_header(handle: BinaryIO, size: int, *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """The header of an open file of `size` bytes, read from its start. A header longer than
    `max_header_bytes` or than the file, one that is not a JSON table of well-formed entries, or one
    whose tensors end past the end of the file (a cut-off download) is a HeaderError."""
    handle.seek(0)
    head = handle.read(8)
    if len(head) < 8:
        raise HeaderError("short", "shorter than a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(max_header_bytes, size - 8):
        raise HeaderError("length", "its header length is impossible")
    try:
        table = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderError("json", "its header is not JSON") from None
    if not isinstance(table, dict):
        raise HeaderError("shape", "its header is not a table of tensors")
    metadata = table.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise HeaderError("shape", "its __metadata__ is not a table")
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    end = 0
    for key, entry in table.items():
        try:
            start, stop = (int(n) for n in entry["data_offsets"])
            shapes[key] = tuple(int(n) for n in entry["shape"])
            dtype = entry["dtype"]
        except (TypeError, KeyError, ValueError):
            raise HeaderError("entry", f"the header entry for {key!r} is malformed", key=key) from None
        if not isinstance(dtype, str) or not 0 <= start <= stop:
            raise HeaderError("entry", f"the header entry for {key!r} is malformed", key=key)
        dtypes[key] = dtype
        end = max(end, stop)
    if 8 + length + end > size:
        missing = 8 + length + end - size
        raise HeaderError("truncated", f"{missing / 2**20:,.1f} MiB of tensor data are missing at the end")
    return SafetensorsHeader(shapes=shapes, dtypes=dtypes, metadata={str(k): str(v) for k, v in metadata.items()})
