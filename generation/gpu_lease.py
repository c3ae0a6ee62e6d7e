"""One GPU, two clusters: the generation worker and the training worker take turns on a shared device.

On the usual one-GPU box a warm SD 1.5 pipeline (~3.5 GB in fp16) and a training run (4-6 GB, more
for SDXL) cannot both hold the card. Both sides take one lease per device, an exclusive `flock` on
`device-<name>.lease` in the GPU lock folder (generation.gpus), which the kernel drops with the process
however it ends:

- the training worker holds it for a whole run (`DeviceLease.held`);
- the generation worker holds it while its pipeline is warm, across jobs, and gives it up — after
  dropping the pipeline — as soon as no job runs and a training run is waiting for it
  (`WarmTurns`). Its next job then waits for the lease and reloads the model.

Whoever waits says so once (`on_wait(holder)`), so the pages can say "waiting for the GPU: a
training run is using it". With two GPUs each cluster claims its own (generation.gpus) and the leases
never meet. `IMAGESITE_GPU_LEASE`: "auto" (on for CUDA devices), "on" (also on the CPU: tests), "off".

No torch and no Django here: the worker passes the device and a way to drop its model.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

POLL_S = 0.2
# The job's phase while it waits for the lease (the generation and training pages say so).
WAITING_FOR_GPU = "waiting_gpu"


def lease_enabled(device: str, mode: str | None = None) -> bool:
    mode = (mode or os.environ.get("IMAGESITE_GPU_LEASE") or "auto").strip().lower()
    if mode == "off":
        return False
    return mode == "on" or device.startswith("cuda")


def _device_name(device: str) -> str:
    return device.replace(":", "-") if ":" in device else f"{device}-0"


class DeviceLease:
    """The exclusive right to use one device, held by one worker process at a time."""

    def __init__(self, device: str, role: str, lock_dir: str | os.PathLike):
        self.folder = Path(lock_dir) / "lease"
        self.name = _device_name(device)
        self.role = role
        self._fd: int | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def is_held(self) -> bool:
        return self._fd is not None

    def _path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}.{suffix}"

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._path("lease"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.role} {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def acquire(self, on_wait: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None) -> None:
        """Block until the lease is this process's. While waiting, a `want` file tells the holder that
        someone waits; `on_wait(holder_role)` is called once; `should_stop()` (a cancel) ends the wait
        by raising whatever it raises."""
        if self.try_acquire():
            return
        want = self._path(f"want-{self.role}-{os.getpid()}")
        want.touch()
        told = False
        try:
            while not self.try_acquire():
                if not told and on_wait is not None:
                    on_wait(self.holder_role() or "another worker")
                    told = True
                if should_stop is not None:
                    should_stop()
                time.sleep(POLL_S)
        finally:
            want.unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder_role(self) -> str:
        try:
            return self._path("lease").read_text().split()[0]
        except (OSError, IndexError):
            return ""

    def others_waiting(self) -> bool:
        """Whether a live process of another role waits for this lease (stale want files of dead
        processes are removed)."""
        for want in self.folder.glob(f"{self.name}.want-*"):
            _, role, pid = want.name.rsplit(".", 1)[1].split("-", 2)
            if role == self.role:
                continue
            if _alive(int(pid)):
                return True
            want.unlink(missing_ok=True)
        return False

    @contextlib.contextmanager
    def held(self, on_wait: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        self.acquire(on_wait, should_stop)
        try:
            yield
        finally:
            self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WarmTurns:
    """The generation worker's side: hold the lease while the pipeline is warm; when a job is not
    running and a training run waits, drop the pipeline (`drop_model`) and give the lease up."""

    def __init__(self, lease: DeviceLease, drop_model: Callable[[], None], poll_s: float = POLL_S):
        self.lease = lease
        self.drop_model = drop_model
        self.poll_s = poll_s
        self._busy = threading.Lock()  # held while a job runs
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @contextlib.contextmanager
    def job(self, on_wait: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Run a job with the lease held (waiting for it, and telling `on_wait`, if training has it)."""
        with self._busy:
            self.lease.acquire(on_wait, should_stop)
            self._start_watcher()
            yield

    def _start_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="gpu-lease-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if not self.lease.is_held or not self.lease.others_waiting():
                continue
            if not self._busy.acquire(blocking=False):
                continue  # a job runs: give the GPU up when it ends
            try:
                self.drop_model()
                self.lease.release()
            finally:
                self._busy.release()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.lease.release()
