"""What a run reports back: progress to its callback, a result at the end, or one of two errors.

Torch-free, so the worker's task can name these types before it loads the training code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from .options import TrainingOptions


class TrainingCanceled(Exception):
    """Raised when `should_cancel()` returned True; nothing was written to the output folder."""


class TrainingError(RuntimeError):
    """A run that cannot go on, with a message a person can act on (shown as the job's error)."""


@dataclass(frozen=True)
class TrainingProgress:
    """One report to the progress callback.

    `phase` is "preparing_model" (a single checkpoint file being converted into a cached
    diffusers folder: step 0 of 1 while it runs, `message` says what it does), "class_images"
    (generating prior-preservation images: step = images done) or "training" (step = optimizer
    steps done; step 0 with a `message` when the run starts again with lower-memory settings after
    an out-of-memory). `loss` is the step's total loss (mean squared error in
    the model's prediction space); `validation_images` are RGB PIL images at the model's resolution,
    one per validation prompt, only on validation steps.
    """

    phase: Literal["preparing_model", "class_images", "training"]
    step: int
    total: int
    loss: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    validation_images: list[Image.Image] | None = None
    validation_prompts: tuple[str, ...] = ()
    message: str | None = None  # a sentence for the run's page and log, e.g. why it retried


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run wrote and how it went.

    `checkpoint_path` is the LoRA `.safetensors` file (method "lora") or the folder holding `unet/`
    (and `text_encoder/` when trained) in diffusers layout (method "full"). `size_bytes` sums `files`.
    """

    method: str
    checkpoint_path: Path
    files: list[Path]
    size_bytes: int
    steps: int
    final_loss: float
    seconds_per_step: float
    seconds_total: float
    class_images_generated: int
    options: TrainingOptions = field(repr=False)


ProgressCallback = Callable[[TrainingProgress], None]
