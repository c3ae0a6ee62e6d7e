"""A job's life on a worker, the same for every kind: claimed, run with a heartbeat, ended readably.

imagesite.queue claims jobs in fair order and hands them here (`run_claimed`); `run_job` claims the
one job a message names (data exports)."""
from __future__ import annotations

import contextlib
import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

from django.db import models

from . import stopping
from .jobs import Job, JobCanceled, JobStatus, heartbeat
from .stopping import JobInterrupted

log = logging.getLogger("imagesite.jobs")


def run_job(job: Job | None, work: Callable[[Job], None], **ending) -> str:
    """The life of one job on a worker, the same for every kind: claim the row (or explain why not),
    beat the heartbeat while `work(job)` runs, and end every way out in a state a person can read.

    `work` ends the job itself with `job.succeed()` in the transaction that stores its results (and
    raises JobCanceled if that says the job moved on). `ending` is end_job's keywords: `label`,
    `readable` (exceptions whose message is meant for the person), `canceled` (the ML code's own
    cancel signals) and `cleanup` (removes partial outputs of a job that did not succeed). Returns a
    short outcome for django-q2's task log."""
    if job is None:
        return "deleted before it ran"
    if not job.claim():
        job.refresh_from_db()
        if job.status == JobStatus.QUEUED:  # attempts used up by earlier, killed workers
            job.fail(f"Gave up after {job.attempts} attempts: the worker kept stopping during this job.")
        return f"not run: {job.status}"
    return run_claimed(job, work, **ending)


def run_claimed(job: Job, work: Callable[[Job], None], **ending) -> str:
    """run_job's part after the claim: the job is this worker's (running, attempt counted). A worker
    asked to stop (imagesite.stopping) gives the job back to the queue, its attempt not counted."""
    def work_alone(jobs: list[Job]) -> list[BaseException | None]:
        work(job)
        return [None]

    return _run_together([job], work_alone, **ending)[0]


def run_claimed_batch(jobs: list[Job], work: Callable[[list[Job]], list[BaseException | None]], **ending) -> str:
    """run_claimed for jobs a worker runs together (imagesite.queue.claim_batch): one heartbeat each,
    the time shared, and each job ended on its own: `work(jobs)` finishes the jobs that succeed and
    returns, per job, None or the exception that ended it (canceled mid-batch, failed); an exception
    out of `work` itself ends every job of the batch that way."""
    outcomes = _run_together(jobs, work, **ending)
    return ", ".join(f"{type(job)._meta.model_name} {job.pk} {outcome}" for job, outcome in zip(jobs, outcomes))


def _run_together(jobs: list[Job], work: Callable[[list[Job]], list[BaseException | None]], **ending) -> list[str]:
    """run_claimed_batch's outcome per job ("succeeded", or end_job's with `ending`'s arguments)."""
    try:
        if stopping.is_stopping():
            raise JobInterrupted()
        with contextlib.ExitStack() as stack:
            for job in jobs:
                stack.enter_context(heartbeat(job))
            stack.enter_context(stopping.interruptible())
            stack.enter_context(counting_gpu_seconds(jobs))
            ended = work(jobs)
    except (JobInterrupted, Exception) as exc:  # noqa: BLE001 - any failure must end the jobs, readably
        ended = [exc] * len(jobs)
    return ["succeeded" if exc is None else end_job(job, exc, **ending) for job, exc in zip(jobs, ended)]


def end_job(job: Job, exc: BaseException, *, label: str, readable: tuple[type[BaseException], ...] = (),
            canceled: tuple[type[BaseException], ...] = (), cleanup: Callable[[Job], None] | None = None) -> str:
    """End a job its work could not finish, in a state a person can read; returns the outcome.
    Anything not `readable` fails as "<label> failed: <type>: <message>"; messages never show server
    paths (Job.fail)."""
    if isinstance(exc, JobInterrupted):
        outcome = "back in the queue: the worker is stopping" if job.give_back() else "interrupted"
    elif isinstance(exc, (JobCanceled, *canceled)):
        outcome = "canceled"
    elif isinstance(exc, readable):
        job.fail(str(exc))
        outcome = "failed"
    else:
        log.error("%s %s failed", label, job.pk, exc_info=exc)
        job.fail(f"{label} failed: {type(exc).__name__}: {str(exc)[:300]}")
        outcome = "failed"
    if cleanup is not None:
        cleanup(job)
    return outcome


class _GpuClock:
    """The running jobs' GPU time: seconds since `started`, less those spent off the clock."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.off_s = 0.0
        self.pausing = False


_clock: ContextVar[_GpuClock | None] = ContextVar("gpu_clock", default=None)


@contextmanager
def counting_gpu_seconds(jobs: list[Job]) -> Iterator[None]:
    """Add the seconds the block ran to each job's gpu_seconds, shared equally by a batch's jobs,
    however the block ends (a failed or canceled job used the device too). Time spent inside
    `off_the_gpu_clock()` (the wait for the GPU lease, a model load) is left out."""
    clock = _GpuClock()
    token = _clock.set(clock)
    try:
        yield
    finally:
        _clock.reset(token)
        share = max(0.0, time.monotonic() - clock.started - clock.off_s) / max(1, len(jobs))
        for job in jobs:
            type(job).objects.filter(pk=job.pk).update(gpu_seconds=models.F("gpu_seconds") + share)


@contextmanager
def off_the_gpu_clock() -> Iterator[None]:
    """A stretch of a job's work that is not its GPU time: waiting for the GPU lease (another cluster
    has the device), loading the model. Nested stretches count once; outside counting_gpu_seconds
    this does nothing."""
    clock = _clock.get()
    if clock is None or clock.pausing:
        yield
        return
    clock.pausing, started = True, time.monotonic()
    try:
        yield
    finally:
        clock.off_s += time.monotonic() - started
        clock.pausing = False
