"""One GPU per worker process: which device a queue worker renders or trains on.

django-q2 forks its workers from a sentinel process, which `manage.py qcluster` itself forked. CUDA
initialised in a process that later forks breaks the children (django-q #713), so neither of those
processes may touch CUDA; they never even import torch (tests/test_gpus.py reads their memory maps).
Each worker claims its GPU the first time a task asks for a device, inside the worker, and keeps it for
the life of the process:

- the claim is an exclusive, non-blocking `flock` on `gpu-N.lock` in a runtime folder, one folder per
  cluster role ("generation", "training"). The kernel drops the lock when the process ends, however it
  ends, so a recycled, restarted or killed worker's GPU is free for its successor, and two workers of
  a role never share a GPU while one is free;
- with more workers than GPUs the extra workers do not wait (a task is already in their hands): they
  share a GPU, the least shared first (`gpu-N.share-K.lock`), and say so in a warning;
- without CUDA every worker renders on "cpu" and claims nothing.

Settings (read from Django's settings when they are configured, else from the environment, so benches
and scripts run without Django): `IMAGESITE_GPUS` ("0,1": the CUDA device numbers workers may use;
default all), `IMAGESITE_TRAINING_GPU` (a GPU kept for the training cluster: generation workers leave
it alone while they have another), `IMAGESITE_GPU_LOCK_DIR`. Without `IMAGESITE_TRAINING_GPU` the
training worker prefers the last GPU, so on two GPUs with one generation worker they do not meet.

Importing this module has no side effects and imports no torch; `worker_device()` imports torch (the
worker is about to use it anyway), and pins the claimed device as the process's current CUDA device.
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger("generation.gpus")

ROLES = ("generation", "training")
DEFAULT_LOCK_DIR = Path(__file__).resolve().parent.parent / "build" / "gpu-locks"


@dataclass(frozen=True)
class Claim:
    index: int  # CUDA device number, as this process numbers them (after CUDA_VISIBLE_DEVICES)
    shared: bool  # True when every GPU of the pool already had a worker


@dataclass(frozen=True)
class GpuSettings:
    gpus: tuple[int, ...] | None  # None: every GPU CUDA shows
    training_gpu: int | None
    lock_dir: Path


_held: dict[int, tuple[str, int]] = {}  # pid → (device, open lock fd); the fd must stay open


def parse_gpu_list(value: str | None) -> tuple[int, ...] | None:
    """ "0,1" → (0, 1); empty or None → None (all GPUs). Raises ValueError naming the bad value."""
    if value is None or not value.strip():
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not all(item.isdigit() for item in items) or len(set(items)) != len(items):
        raise ValueError(f"IMAGESITE_GPUS={value!r}: list distinct CUDA device numbers, e.g. 0,1.")
    return tuple(int(item) for item in items)


def current_settings() -> GpuSettings:
    """The GPU settings from Django's settings when configured (imagesite/settings.py parses them),
    else from the environment with the same names and defaults."""
    try:
        from django.conf import settings
    except ImportError:  # a bench on a GPU machine without the web stack
        settings = None
    if settings is not None and settings.configured:
        gpus = getattr(settings, "IMAGESITE_GPUS", None)
        return GpuSettings(
            gpus=tuple(gpus) if gpus else None,
            training_gpu=getattr(settings, "IMAGESITE_TRAINING_GPU", None),
            lock_dir=Path(getattr(settings, "IMAGESITE_GPU_LOCK_DIR", DEFAULT_LOCK_DIR)),
        )
    training = os.environ.get("IMAGESITE_TRAINING_GPU", "").strip()
    return GpuSettings(
        gpus=parse_gpu_list(os.environ.get("IMAGESITE_GPUS")),
        training_gpu=int(training) if training else None,
        lock_dir=Path(os.environ.get("IMAGESITE_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR),
    )


def gpu_pool(count: int, role: str, *, gpus: Sequence[int] | None = None, training_gpu: int | None = None) -> list[int]:
    """The GPUs a worker of `role` may claim, in the order it tries them.

    `count` is how many CUDA devices this process sees. Generation workers take `gpus` (default all)
    without the training GPU, unless that would leave them none; the training worker takes the
    training GPU, else the pool from its last GPU down. Raises ValueError for a GPU that does not exist."""
    if role not in ROLES:
        raise ValueError(f"Unknown worker role {role!r}; use one of {', '.join(ROLES)}.")
    pool = list(gpus) if gpus else list(range(count))
    for name, index in [("IMAGESITE_GPUS", i) for i in pool] + [("IMAGESITE_TRAINING_GPU", training_gpu)]:
        if index is not None and not 0 <= index < count:
            raise ValueError(f"{name} names GPU {index}, but this worker sees {count} GPU(s) (0-{count - 1}).")
    if role == "training":
        return [training_gpu] if training_gpu is not None else pool[::-1]
    rest = [index for index in pool if index != training_gpu]
    return rest or pool


def claim_gpu(pool: Sequence[int], lock_dir: str | os.PathLike) -> tuple[Claim, int]:
    """Claim a GPU of `pool` for this process: the first free one, else (more workers than GPUs) a
    share of the least shared one. Returns the claim and the lock's file descriptor, which the caller
    keeps open for as long as it uses the GPU (closing it, or exiting, frees the GPU). Never blocks."""
    if not pool:
        raise ValueError("No GPU to claim.")
    folder = Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    share = 0
    while True:  # share 0 is the GPU itself; the loop ends by the time every worker has a slot
        for index in pool:
            name = f"gpu-{index}.lock" if share == 0 else f"gpu-{index}.share-{share}.lock"
            fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return Claim(index=index, shared=share > 0), fd
        share += 1


def worker_role() -> str:
    """"training" in the training cluster (started with Q_CLUSTER_NAME=training), else "generation"."""
    return "training" if os.environ.get("Q_CLUSTER_NAME") == "training" else "generation"


def worker_device(role: str | None = None) -> str:
    """The device this worker process uses for every job: "cuda:N" (claimed on the first call and
    kept until the process ends; the same answer on every later call) or "cpu" without CUDA.

    Call it in the worker, where the model is loaded, never in a process that forks workers."""
    pid = os.getpid()
    if pid in _held:
        return _held[pid][0]
    count = _cuda_device_count()
    if count == 0:
        return "cpu"
    role = role or worker_role()
    config = current_settings()
    pool = gpu_pool(count, role, gpus=config.gpus, training_gpu=config.training_gpu)
    claim, fd = claim_gpu(pool, config.lock_dir / role)
    device = f"cuda:{claim.index}"
    _held[pid] = (device, fd)
    _make_current(claim.index)
    if claim.shared:
        log.warning(
            "%s worker %d shares %s with another worker: there are more workers than GPUs (%s). "
            "Set IMAGESITE_WORKERS to %d or list more GPUs in IMAGESITE_GPUS.",
            role, pid, device, ", ".join(map(str, pool)), len(pool),
        )
    else:
        log.info("%s worker %d uses %s (GPUs for this role: %s)", role, pid, device, ", ".join(map(str, pool)))
    return device


def release() -> None:
    """Give this process's GPU back (tests; a worker keeps its GPU until it exits)."""
    held = _held.pop(os.getpid(), None)
    if held is not None:
        os.close(held[1])


def _cuda_device_count() -> int:
    """CUDA devices this process sees (0 without CUDA). Initialises CUDA: workers only."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _make_current(index: int) -> None:
    """Make the claimed GPU the process's current device, so code that says "cuda" without a number
    (and CUDA caches, NCCL, bitsandbytes) lands on it too."""
    import torch

    torch.cuda.set_device(index)
