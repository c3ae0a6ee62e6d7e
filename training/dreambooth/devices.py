"""What the training machine decides: the GPU-dependent defaults, where models go, the optimizer.

Imports torch: only the worker loads this module. The web process decides nothing here; it shows
and checks `options.method_defaults` and stores what the user chose, which `default_options_for`
completes on the worker.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .options import TrainingOptions, is_tiny_model, method_defaults

logger = logging.getLogger(__name__)


def default_options_for(base_model: str | Path, method: str = "lora", **overrides: Any) -> TrainingOptions:
    """Everything a run on this machine needs: `method_defaults` for the model and the method,
    with the MACHINE_FIELDS decided for this machine's GPU (`machine_defaults`), then `overrides`
    (what the user chose, e.g. a run's stored options: they win over both)."""
    machine = machine_defaults(tiny=is_tiny_model(base_model))
    return method_defaults(base_model, method, **{**machine, **overrides})


def machine_defaults(*, tiny: bool) -> dict[str, Any]:
    """The MACHINE_FIELDS for this machine, as TrainingOptions overrides.

    With a CUDA GPU, an SD-sized model (`tiny` False) trains in fp16 with gradient checkpointing
    and 8-bit AdamW when bitsandbytes is installed. Without one, everything is float32; a tiny
    model (the 64 px demo) then takes one CPU thread.
    """
    cuda = torch.cuda.is_available()
    if tiny:
        # The embedded set-up runs a generation worker on the same cores; a tiny model gains
        # little from a second thread and loses ~10x when two processes spin for both cores.
        return {"cpu_threads": None if cuda else 1}
    return {
        "gradient_checkpointing": cuda, "mixed_precision": "fp16" if cuda else "no",
        "use_8bit_adam": cuda and _bitsandbytes_installed(),
    }


def training_device(options: TrainingOptions) -> torch.device:
    """Where the run trains: `options.device` when set; else this worker's GPU
    (generation.gpus.worker_device(): "cuda:N" or "cpu", one worker per GPU) where that module
    exists, else "cuda" when there is a GPU, else the CPU."""
    if options.device:
        return torch.device(options.device)
    try:
        from generation.gpus import worker_device
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(worker_device())


def lower_memory_options(options: TrainingOptions) -> tuple[TrainingOptions, list[str]]:
    """The run's options with every lower-memory setting not yet on (gradient checkpointing, 8-bit
    Adam when bitsandbytes is installed, batch 1, fp16 instead of float32, the text encoders
    frozen), and those changes in words ([] when nothing is left to lower)."""
    changes: dict[str, Any] = {}
    said: list[str] = []
    if not options.gradient_checkpointing:
        changes["gradient_checkpointing"] = True
        said.append("gradient checkpointing on")
    if not options.use_8bit_adam and _bitsandbytes_installed():
        changes["use_8bit_adam"] = True
        said.append("8-bit Adam")
    if options.batch_size > 1:
        changes["batch_size"] = 1
        said.append("batch size 1")
    if options.mixed_precision == "no":
        changes["mixed_precision"] = "fp16"
        said.append("fp16 mixed precision")
    if options.train_text_encoder:
        changes["train_text_encoder"] = False
        said.append("the text encoder frozen")
    return replace(options, **changes), said


def out_of_memory_advice(options: TrainingOptions) -> str:
    """The knobs still left once the lower-memory retry failed too, as a sentence's ending."""
    knobs = []
    if options.method == "full":
        knobs.append("the LoRA method instead of a full fine-tune")
    if options.method == "lora" and options.lora_rank > 4:
        knobs.append(f"a lower lora_rank (now {options.lora_rank})")
    if options.prior_preservation:
        knobs.append("prior_preservation off (it doubles each step's batch)")
    if not options.use_8bit_adam:
        knobs.append("8-bit Adam (install bitsandbytes on the worker)")
    knobs.append("a GPU with more free memory (no other job on it)")
    return ", ".join(knobs)


def _bitsandbytes_installed() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a CUDA-less build that fails on import
        return False
    return True


def _move(model: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Move a model to `device`, casting only when its dtype differs (diffusers warns on every cast)."""
    if model.dtype != dtype:
        model.to(device, dtype)
    else:
        model.to(device)


def _make_optimizer(params: list[dict[str, Any]], options: TrainingOptions, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, 8-bit (bitsandbytes) when asked for on a GPU and installed; logs why when it is not."""
    if options.use_8bit_adam:
        if device.type != "cuda":
            logger.info("8-bit Adam needs a CUDA GPU; using torch AdamW on %s", device.type)
        else:
            try:
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(params, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
            except Exception as exc:  # ImportError or a broken CUDA build
                logger.warning("8-bit Adam asked for but bitsandbytes is unusable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(params, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

