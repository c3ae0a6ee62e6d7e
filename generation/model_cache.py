"""A single checkpoint file as a diffusers folder, converted once and reused (worker side: torch).

Training (and anything else that wants a model's parts as files) needs a diffusers folder. A single
`.safetensors`/`.ckpt` is built with its family's configs (generation/families.py), saved in the file's
own precision under `IMAGESITE_MODEL_CACHE/<name>-<hash>/`, and found there next time. The hash covers
the file's resolved path, size and modification time and the configs used, so a replaced file gets a
fresh conversion. The folder appears whole or not at all: it is written beside its final name and
renamed into place, under a lock file so two workers never convert the same file at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .checkpoint_keys import read_file_keys
from .errors import GenerationError
from .families import SINGLE_FILE_SUFFIXES, detect_family

log = logging.getLogger("generation.model_cache")

Progress = Callable[[str], None]


def diffusers_folder(
    source: str | os.PathLike,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    config: str | None = None,
) -> Path:
    """`source` as a diffusers folder: a folder as it is; a single file converted once into
    `cache_dir` (default: settings.IMAGESITE_MODEL_CACHE) and reused afterwards.

    `progress` gets short texts for a person ("Converting model.safetensors to a diffusers folder
    (once)"). `config` overrides the family's shipped configs (default: settings.IMAGESITE_MODEL_CONFIG,
    whose shipped SD 1.5 value counts as unset). Raises GenerationError for an unsupported,
    damaged or missing model; a failed conversion leaves nothing in the cache."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES or not path.is_file():
        raise GenerationError(f"{source} is neither a diffusers model folder nor a .safetensors/.ckpt file on this machine.")
    from .single_file import config_for

    family = detect_family(str(path))
    config = config_for(family, config if config is not None else _setting("IMAGESITE_MODEL_CONFIG"))
    cache = Path(cache_dir if cache_dir is not None else _setting("IMAGESITE_MODEL_CACHE"))
    target = cache / f"{path.stem}-{_fingerprint(path, config)}"
    if _is_complete(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{target.name}.lock"):
        if _is_complete(target):  # another process converted it while this one waited
            return target
        _remove_leftovers(cache, target.name)
        _convert(path, target, config, family, progress or (lambda text: None))
    return target


def _setting(name: str) -> str | None:
    from django.conf import settings

    return getattr(settings, name, None)


def _fingerprint(path: Path, config: str) -> str:
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{Path(config).resolve()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _is_complete(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs (released if the process dies)."""
    import fcntl

    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(cache: Path, name: str) -> None:
    """Temporary folders of conversions that were killed midway (we hold the lock: nobody writes them)."""
    for leftover in cache.glob(f".{name}.*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)


def _convert(path: Path, target: Path, config: str, family, progress: Progress) -> None:
    import torch

    from .single_file import load_single_file_pipeline

    progress(f"Converting {path.name} to a diffusers folder (once)")
    started = time.perf_counter()
    precision = read_file_keys(path).precision or "float32"
    kwargs: dict = {"dtype": getattr(torch, precision)}
    if family.pipeline_class == "StableDiffusionPipeline":
        kwargs |= {"safety_checker": None, "requires_safety_checker": False}
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        pipe = load_single_file_pipeline(str(path), config, family=family, **kwargs)
        pipe.save_pretrained(partial, safe_serialization=True)
        del pipe
        _copy_tokenizer_files(Path(config), partial)
        (partial / "imagesite.json").write_text(json.dumps(
            {"name": path.name, "converted_from": str(path.resolve()), "family": family.key, "precision": precision},
            indent=2) + "\n")
        os.replace(partial, target)
    except OSError as exc:
        raise GenerationError(f"Could not write the converted {path.name} into {target.parent}: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("converted %s (%s, %s) into %s in %.1f s", path.name, family.label, precision, target, seconds)
    progress(f"Converted {path.name} in {seconds:.0f} s")


def _copy_tokenizer_files(config: Path, folder: Path) -> None:
    """transformers 5 saves a tokenizer as tokenizer.json only; the vocab.json and merges.txt other
    tools (and imagesite's token checks) read come from the configs the file was built with."""
    for tokenizer in config.glob("tokenizer*"):
        for name in ("vocab.json", "merges.txt"):
            source, dest = tokenizer / name, folder / tokenizer.name / name
            if source.is_file() and dest.parent.is_dir() and not dest.exists():
                shutil.copyfile(source, dest)
