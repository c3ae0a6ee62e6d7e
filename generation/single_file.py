"""Load an original-layout Stable Diffusion file (`.safetensors` / `.ckpt`) offline, with readable errors.

`.ckpt` files are pickles. Notebook checkpoints (DreamBooth, Lightning) pickle more than tensors: a
`Namespace` of hyper-parameters, callbacks. torch's `weights_only` loader refuses any class it doesn't
know, and a plain `torch.load` would run whatever the pickle names. We take a third way: every class
the pickle names is replaced by an inert stand-in (`_Inert`), so the tensors load and no code from the
file runs. Globals from modules torch blocks outright (os, sys, ...) are a malicious file's
signature: those are refused. No Django here.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import GenerationError
from .families import FAMILIES, INPAINT_CHANNELS, Family, detect_family

log = logging.getLogger("generation.single_file")

# torch's weights_only unpickler refuses these modules whatever is allowlisted.
_BLOCKED_MODULES = ("os", "sys", "posix", "nt")


class _Inert:
    """Stands in for every class or function a `.ckpt` pickle names. Whatever the pickle builds or
    calls with it becomes an empty OrderedDict: one of the few types torch's `weights_only` loader
    lets a pickle fill, with items (Lightning's AttributeDict hyper-parameters) or attributes (an
    argparse.Namespace). Nothing from the file runs; only the tensors are used afterwards."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


def _convert_hint(path: Path) -> str:
    safe = path.with_suffix(".safetensors")
    return (
        f"If you trust where the file came from, convert it once with `python manage.py export_single_file "
        f"{safe} --model {path} --trust-pickle` and use {safe.name} instead."
    )


def inert_globals_for(path: str | os.PathLike) -> list[tuple[type, str]]:
    """The (stand-in, 'module.name') pairs that let torch's `weights_only` loader read `path`.

    Only zip-format `torch.save` files (torch >= 1.6) can be inspected; for others (legacy format, a
    damaged file) this returns [] and torch's plain `weights_only` load decides. Raises
    GenerationError when the pickle names a function from a module torch blocks (a file built to run
    commands)."""
    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        log.info("%s: pickled globals cannot be listed (%s); loading with weights_only as is", path.name, exc)
        return []
    blocked = [name for name in names if name.split(".", 1)[0] in _BLOCKED_MODULES]
    if blocked:
        raise GenerationError(
            f"{path.name} contains pickled calls to {', '.join(blocked)}; imagesite refuses to load it because "
            "unpickling could run commands on this machine. Don't use this file unless you know why it does that."
        )
    if names:
        log.info("%s: pickled %s replaced by inert stand-ins (only tensors are used)", path.name, ", ".join(names))
    return [(_Inert, name) for name in names]


def read_ckpt(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a `.ckpt` (its `state_dict`, or the top level when there is none), on the CPU.

    Safe by default (inert stand-ins, as above). `trust_pickle=True` is a plain `torch.load`, which
    runs the file's pickled code: only for a file the user vouches for, from the command line."""
    if trust_pickle:
        data = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(inert_globals_for(path)):
                data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise GenerationError(
                f"{Path(path).name} could not be read safely ({str(exc).splitlines()[0]}). {_convert_hint(Path(path))}"
            ) from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise GenerationError(f"{Path(path).name} holds no state dict of tensors.")
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}


def resave_single_file(source: str | os.PathLike, dest: str | os.PathLike, *, trust_pickle: bool = False, half: bool = False) -> Path:
    """Copy the tensors of a single file into another (typically `.ckpt` → `.safetensors`), keys
    unchanged; pickled extras are dropped. See `read_ckpt` for `trust_pickle`."""
    from .checkpoint_convert import write_state_dict

    if Path(source).suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(source), device="cpu")
    else:
        state = read_ckpt(source, trust_pickle=trust_pickle)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return write_state_dict(state, dest)


def config_for(family: Family, explicit: str | os.PathLike | None) -> str:
    """The config folder a single file of `family` is built with: IMAGESITE_MODEL_CONFIG when the
    operator points it somewhere, else the family's shipped one. The shipped SD 1.5 folder (that
    setting's default) counts as unset, so an SDXL or SD 2.x file needs no setting either."""
    if explicit and Path(explicit).resolve() != FAMILIES["sd1"].config_dir.resolve():
        return str(explicit)
    return str(family.config_dir)


def load_single_file_pipeline(source: str, config: str | None, *, family: Family | None = None, **kwargs: Any):
    """`from_single_file` of the family's pipeline class with nothing downloaded and readable failures.

    `config` is IMAGESITE_MODEL_CONFIG (None or the shipped SD 1.5 folder: the family's shipped
    configs, see `config_for`); `family` is detected from the file when not given; `kwargs` go to
    `from_single_file` (dtype, ...). Every failure a user can fix becomes a GenerationError."""
    import diffusers

    path = Path(source)
    if not path.is_file():
        raise GenerationError(f"The model file {source} does not exist.")
    family = family or detect_family(str(path))
    config = config_for(family, config)
    if not (Path(config) / "model_index.json").is_file():
        raise GenerationError(
            f"{path.name} is a single checkpoint file; set IMAGESITE_MODEL_CONFIG to a local diffusers folder "
            f"with its configs (model_index.json, unet/, vae/, ...; nothing is downloaded). {config} is not one."
        )
    pipeline_class = getattr(diffusers, family.pipeline_class)
    if not family.takes_safety_checker:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("safety_checker", "requires_safety_checker")}
    if family.inpainting:
        # The family's configs describe its text-to-image UNet (4 input channels); an inpainting file's
        # UNet is the same but for a 9-channel first convolution. diffusers sets the UNet's in_channels
        # from this (and passes it to no other component), so no inpainting configs need shipping.
        kwargs["num_in_channels"] = INPAINT_CHANNELS
    inert = inert_globals_for(path) if path.suffix.lower() == ".ckpt" else []
    try:
        with torch.serialization.safe_globals(inert):
            pipe = pipeline_class.from_single_file(str(path), config=config, local_files_only=True, **kwargs)
    except (GenerationError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        raise GenerationError(_explain(path, config, family, exc)) from exc
    _check_complete(pipe, path, config)
    return pipe


def _check_complete(pipe: Any, path: Path, config: str) -> None:
    """diffusers leaves a weight the file lacks on the meta device (no data) instead of failing;
    rendering would then crash far from the cause. Say which weights are missing instead."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing = [key for key, tensor in component.state_dict().items() if tensor.is_meta]
        if missing:
            raise GenerationError(
                f"{path.name} does not hold every weight the configs in {config} describe: {name} lacks "
                f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}. Is it a complete checkpoint of this family?"
            )


def _explain(path: Path, config: str, family: Family, exc: Exception) -> str:
    text = str(exc)
    if "expected shape" in text or "size mismatch" in text:
        return (
            f"{path.name} looks like {family.label} but does not match the architecture in {config} "
            f"({text.split('. ')[0]}). For a model with other sizes, set IMAGESITE_MODEL_CONFIG to a folder "
            "with that model's configs."
        )
    if "Unable to load weights" in text or "Error while deserializing" in text:
        if path.suffix.lower() == ".ckpt":
            return (
                f"{path.name} could not be read safely: it holds pickled Python objects imagesite will not unpickle "
                f"(unpickling can run code), or it is damaged. {_convert_hint(path)}"
            )
        return f"{path.name} could not be read as a checkpoint (damaged or incomplete download?). Download or export it again."
    if "missing in the checkpoint" in text:
        return f"{path.name} is not a full {family.label} checkpoint (a LoRA or a single component?): {text.splitlines()[0]}"
    return f"Could not load {path.name} with the configs in {config}: {text.splitlines()[0] if text else type(exc).__name__}"
