"""A django-q2 task for tests/test_gpus.py, run inside a real qcluster worker: it loads torch as a
rendering worker does, claims a device through generation.gpus with two GPUs pretended (this machine has
none: the device count and `torch.cuda.set_device` are the only things patched), and reports where it ran."""
from __future__ import annotations

import os
import time


def claim_and_report(hold_s: float = 1.0) -> dict:
    import torch  # noqa: F401  (a real worker has torch loaded by now; the test checks where it is mapped)

    from generation import gpus

    gpus._cuda_device_count = lambda: 2
    gpus._make_current = lambda index: None
    device = gpus.worker_device()
    time.sleep(hold_s)  # keep this worker busy so the next task goes to the other one
    return {"pid": os.getpid(), "sentinel": os.getppid(), "device": device}
