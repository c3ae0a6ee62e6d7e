"""What a single checkpoint file holds, read without torch and without running anything from it.

`.safetensors`: an 8-byte little-endian header length, then a JSON header naming every tensor with its
dtype, shape and byte range; the tensors follow. `.ckpt`: a `torch.save` zip whose `data.pkl` names
every key as a string; it is walked with `pickletools.genops` (which decodes opcodes, never builds an
object), so a malicious pickle runs nothing here. Torch-free: the web process reads these.
"""
from __future__ import annotations

import os
import pickletools
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GenerationError
from .safetensors_header import HeaderError, read_safetensors_header

# The first convolution of an original-layout UNet: its input channels tell inpainting (9),
# instruct-pix2pix (8), the x4 upscaler (7) and depth (5) models from text-to-image ones (4).
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
_PRECISIONS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "HalfStorage": "float16",
               "BFloat16Storage": "bfloat16", "FloatStorage": "float32"}


@dataclass
class FileKeys:
    """The tensor names of a single file, what the file says of itself, and its weights' precision."""

    keys: frozenset[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # only the shapes detection needs
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors `__metadata__`
    # "float16" | "bfloat16" | "float32" -> tensors of it (safetensors); a .ckpt's pickle names each
    # storage type once, so there the counts only say which precisions occur.
    precisions: Counter = field(default_factory=Counter)
    counted: bool = True
    scanned: bool = True  # False: a legacy .ckpt whose keys could not be listed

    @property
    def precision(self) -> str | None:
        """The floating-point precision of most weights (float32 when a .ckpt mixes them: keeps every bit)."""
        if not self.precisions:
            return None
        if len(self.precisions) > 1 and not self.counted:
            return "float32"
        return self.precisions.most_common(1)[0][0]

    def has(self, *fragments: str) -> bool:
        """Whether any key contains one of `fragments` starting at a name boundary (the key's start or a
        dot), so "t_block." does not match "input_hint_block."."""
        bounded = tuple(f if f.startswith(".") else "." + f for f in fragments)
        return any(key.startswith(fragments) or any(f in key for f in bounded) for key in self.keys)

    def starts(self, *prefixes: str) -> bool:
        return any(key.startswith(prefixes) for key in self.keys)


def _damaged(path: Path, why: str) -> GenerationError:
    return GenerationError(
        f"{path.name} is damaged or not a complete checkpoint ({why}). An interrupted download is the usual "
        "cause: download or export it again."
    )


def read_safetensors_keys(path: str | os.PathLike) -> FileKeys:
    """The header of a `.safetensors` file; a file shorter than its header promises is reported as
    damaged (a truncated download), before anything tries to load it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            header = read_safetensors_header(handle, path.stat().st_size)
    except HeaderError as error:
        raise _damaged(path, str(error)) from None
    precisions = Counter(_PRECISIONS[d] for d in header.dtypes.values() if d in _PRECISIONS)
    return FileKeys(keys=frozenset(header.shapes), shapes=header.shapes, metadata=header.metadata, precisions=precisions)


def read_ckpt_keys(path: str | os.PathLike) -> FileKeys:
    """The string keys of a `.ckpt`'s pickle, found by walking its opcodes (nothing is unpickled).

    A zip-format file (torch >= 1.6) has one `data.pkl`; a legacy file is a few pickles in a row.
    A file that is neither, or whose pickle breaks off, is damaged; a legacy file that cannot be
    walked comes back with `scanned=False` (callers then fall back to the historical default)."""
    path = Path(path)
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if name is None:
                    raise _damaged(path, "a zip without data.pkl: not a torch checkpoint")
                with archive.open(name) as pickled:
                    return _scan_pickles(pickled, count=1)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise _damaged(path, f"the zip archive is broken: {exc}") from None
    if magic[:1] != b"\x80":
        raise GenerationError(f"{path.name} is not a torch checkpoint (neither a zip nor a pickle).")
    try:
        with path.open("rb") as handle:
            # Legacy torch.save: magic number, protocol, system info, then the pickle with the keys.
            return _scan_pickles(handle, count=4)
    except Exception:  # noqa: BLE001 - an odd legacy layout: detection falls back, loading decides
        return FileKeys(keys=frozenset(), scanned=False)


def _scan_pickles(stream, *, count: int) -> FileKeys:
    """Strings, storage types and the UNet's first convolution's shape from `count` pickles in a row.

    A tensor pickles as: its key string, `_rebuild_tensor_v2`, a persistent id naming its storage
    (BINPERSID), the storage offset, then its size as a tuple of ints."""
    keys: set[str] = set()
    precisions: Counter = Counter()
    shapes: dict[str, tuple[int, ...]] = {}
    watching: str | None = None  # the key whose size tuple is next to read
    state, ints = "", []
    for _ in range(count):
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if isinstance(arg, str):
                # GLOBAL args read "torch HalfStorage"; protocol 4's STACK_GLOBAL gives the names as strings.
                precision = _PRECISIONS.get(arg.rsplit(" ", 1)[-1])
                if precision:
                    precisions[precision] += 1
                elif name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"):
                    keys.add(arg)
                    if arg == UNET_CONV_IN:
                        watching, state, ints = arg, "key", []
            if watching is None:
                continue
            if state == "key" and name == "BINPERSID":
                state = "offset"
            elif state in ("offset", "size") and name in ("BININT", "BININT1", "BININT2", "LONG1"):
                if state == "offset":
                    state = "size"
                else:
                    ints.append(int(arg))
            elif state == "size" and name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                shapes[watching] = tuple(ints)
                watching = None
    return FileKeys(keys=frozenset(keys), shapes=shapes, precisions=precisions, counted=False)


def read_file_keys(path: str | os.PathLike) -> FileKeys:
    """`read_safetensors_keys` or `read_ckpt_keys` by the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"The model file {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        return read_safetensors_keys(path)
    return read_ckpt_keys(path)
