"""A worker process's stop: SIGTERM or Ctrl-C lets the running job stop at its next step and go back
to the queue, never counted as a failed attempt.

`manage.py workers` (imagesite/management/commands/workers.py) installs these handlers in each of its
worker processes. Two levels, both sent by its sentinel, and the first also by systemd or `docker stop`
to the whole process group:
- SIGTERM / SIGINT (soft): a process-wide flag. The job's progress reporter raises JobInterrupted at
  its next step; a job not yet started is given back at once; the worker ends after that task.
- SIGUSR1 (hard, a few seconds later): JobInterrupted raised where the job is now (a model load, the
  final save), only while a job's work runs: never in django-q2's own code around it.

Torch-free: the web process imports imagesite.jobs, which imports this module.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

HARD_STOP = signal.SIGUSR1

_stopping = threading.Event()
_in_work = False


class JobInterrupted(BaseException):
    """The worker is stopping: the job goes back to the queue with its attempt given back.
    A BaseException, like KeyboardInterrupt, so that no `except Exception` in ML code turns it into a
    failed job."""


def is_stopping() -> bool:
    return _stopping.is_set()


def request_stop() -> None:
    """Stop at the next step (what the soft signal does; also for tests)."""
    _stopping.set()


def check() -> None:
    """Raise JobInterrupted when this worker was asked to stop: called at each step."""
    if _stopping.is_set():
        raise JobInterrupted()


@contextmanager
def interruptible() -> Iterator[None]:
    """The region where a hard stop may raise JobInterrupted: the job's own work."""
    global _in_work
    _in_work = True
    try:
        yield
    finally:
        _in_work = False


def install_worker_handlers(timed_out: Callable[[], bool] = lambda: False, on_stop: Callable[[], None] = lambda: None) -> None:
    """In a worker process, before it takes work. `on_stop()` runs at the first stop signal (the
    worker ends after its current task). `timed_out()` is True when django-q2's guard terminates this
    worker for running past the task timeout: that SIGTERM still ends it at once, as it always did
    (the guard has already started its replacement)."""

    def soft(signum, frame) -> None:
        if signum == signal.SIGTERM and timed_out():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _stopping.set()
        on_stop()

    def hard(signum, frame) -> None:
        _stopping.set()
        on_stop()
        if _in_work:
            raise JobInterrupted()

    signal.signal(signal.SIGTERM, soft)
    signal.signal(signal.SIGINT, soft)
    signal.signal(HARD_STOP, hard)
