"""Reading settings from the environment (imagesite/settings.py uses these): typed getters, and the GPU
facts the settings need without initialising CUDA."""
from __future__ import annotations

import os


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_gpu_list(name: str) -> list[int]:
    """ "0,1" → [0, 1]; unset or empty → [] (every GPU)."""
    items = env_list(name, [])
    if not all(item.isdigit() for item in items) or len(set(items)) != len(items):
        raise ValueError(f"{name}={os.environ[name]!r}: list distinct CUDA device numbers, e.g. 0,1.")
    return [int(item) for item in items]


def count_gpus_without_cuda() -> int:
    """GPUs on this machine, counted without initialising CUDA (this process forks the workers, and
    CUDA initialised before a fork breaks the children): CUDA_VISIBLE_DEVICES when set, else NVML
    through pynvml when installed, else `nvidia-smi -L`; 0 when nothing answers."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([item for item in visible.split(",") if item.strip() and item.strip() != "-1"])
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, no driver: ask nvidia-smi
        pass
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def generation_worker_count(value: str, gpus: list[int], training_gpu: int | None) -> int:
    """IMAGESITE_WORKERS: a number, or "auto" for one generation worker per GPU they may use (the GPUs
    in IMAGESITE_GPUS, else every GPU, less the training GPU when another is left; 1 without GPUs)."""
    if value.strip().lower() != "auto":
        return int(value)
    usable = gpus or list(range(count_gpus_without_cuda()))
    return max(1, len([index for index in usable if index != training_gpu]))
