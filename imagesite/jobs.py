"""The life of a background job, shared by generations and training runs.

queued → running → succeeded | failed | canceled. The database row is the truth about a job, not the
broker: the worker claims a row atomically, beats a heartbeat while it works, and every end state is
written with a conditional UPDATE so that a cancel racing a finish can never be overwritten.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.dispatch import Signal
from django.utils import timezone

from . import stopping

log = logging.getLogger("imagesite.jobs")


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Done"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)

# Sent once per job, after the commit that moved it to succeeded, failed or canceled
# (sender: the model class, job: the instance). Webhooks listen to it.
job_finished = Signal()


class JobCanceled(Exception):
    """Raised inside a running job when its row says it was canceled."""


class JobQuerySet(models.QuerySet):
    def for_user(self, user) -> "JobQuerySet":
        return self.filter(owner=user)

    def active(self) -> "JobQuerySet":
        return self.filter(status__in=ACTIVE_STATUSES)


class Job(models.Model):
    """Fields and state changes every queued job has. Concrete models set `task_path` (and
    `cluster` for an alternate django-q2 cluster)."""

    task_path: str = ""
    cluster: str | None = None

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the first step was reported: the ETA's pace leaves out model loading and warm-up.
    first_step_at = models.DateTimeField(null=True, blank=True)
    # Accelerator time the job used: its run, or its share of a batched run (imagesite.queue).
    gpu_seconds = models.FloatField(default=0)

    objects = JobQuerySet.as_manager()

    class Meta:
        abstract = True

    # --- reading -----------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress_percent(self) -> int:
        if not self.progress_total:
            return 0
        return min(100, round(100 * self.progress_step / self.progress_total))

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left, extrapolated from the pace of the steps since the first one (model loading
        before it would make the first estimate far too long)."""
        if self.status != JobStatus.RUNNING or not self.first_step_at or self.progress_step < 2:
            return None
        elapsed = (timezone.now() - self.first_step_at).total_seconds()
        per_step = elapsed / (self.progress_step - 1)
        return max(0.0, per_step * (self.progress_total - self.progress_step))

    @property
    def eta_text(self) -> str:
        """The ETA as a person reads it: blank when there is none yet, "finishing…" under a second
        (never "about 0 s left"), seconds under a minute, then minutes ("about 38 min left")."""
        seconds = self.eta_seconds
        if seconds is None:
            return ""
        return eta_words(seconds)

    def _transition(self, from_statuses, **fields) -> bool:
        """Set `fields` only if the row is still in one of `from_statuses`; refresh self on success."""
        updated = type(self).objects.filter(pk=self.pk, status__in=from_statuses).update(**fields)
        if updated:
            expressions = [name for name, value in fields.items() if hasattr(value, "resolve_expression")]
            for name, value in fields.items():
                if name not in expressions:
                    setattr(self, name, value)
            if expressions:
                self.refresh_from_db(fields=expressions)
            if fields.get("status") in FINISHED_STATUSES:
                transaction.on_commit(lambda: job_finished.send(sender=type(self), job=self))
        return bool(updated)

    # --- state changes -------------------------------------------------------------------------
    def enqueue(self) -> None:
        """Queue this job's task once the surrounding transaction commits (never before: the worker
        must find the row)."""
        from django_q.tasks import async_task

        kwargs = {"task_name": f"{self._meta.model_name}-{self.pk}"}
        if self.cluster:
            kwargs["cluster"] = self.cluster
        pk = self.pk
        transaction.on_commit(lambda: async_task(self.task_path, pk, **kwargs))

    def claim(self) -> bool:
        """Atomically move queued → running for this worker, counting the attempt. False when the row
        is not queued (canceled, already taken, or redelivered by the broker after it finished)."""
        now = timezone.now()
        updated = type(self).objects.filter(
            pk=self.pk, status=JobStatus.QUEUED, attempts__lt=settings.IMAGESITE_MAX_ATTEMPTS
        ).update(status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, attempts=models.F("attempts") + 1)
        if updated:
            self.refresh_from_db()
        return bool(updated)

    def report_progress(self, step: int, total: int, *, pace_starts: bool = True, **extra) -> None:
        """Write progress, heartbeat and `extra` fields of the concrete model; raise JobCanceled when
        the row was canceled meanwhile. The ETA's pace starts at the first report with `pace_starts`
        (a training run's class images come before its own steps)."""
        now = timezone.now()
        fields = {"progress_step": step, "progress_total": total, "heartbeat_at": now, **extra}
        if self.first_step_at is None and pace_starts:
            fields["first_step_at"] = now
        if not self._transition([JobStatus.RUNNING], **fields):
            raise JobCanceled()

    def is_canceled(self) -> bool:
        return type(self).objects.filter(pk=self.pk, status=JobStatus.CANCELED).exists()

    def succeed(self) -> bool:
        return self._transition(
            [JobStatus.RUNNING],
            status=JobStatus.SUCCEEDED,
            finished_at=timezone.now(),
            # from the row: the worker may have written progress with update() behind this instance
            progress_step=models.F("progress_total"),
        )

    def fail(self, reason: str) -> bool:
        return self._transition(
            ACTIVE_STATUSES, status=JobStatus.FAILED, error=without_paths(reason), finished_at=timezone.now()
        )

    def cancel(self) -> bool:
        """Queued jobs end at once; a running job stops at its next step (the worker sees the row)."""
        return self._transition(ACTIVE_STATUSES, status=JobStatus.CANCELED, finished_at=timezone.now())

    def cancel_notice(self) -> str:
        """What the person who just canceled it is told; it sits beside the final "Canceled" badge,
        so it says the job is canceled (a running worker stops at its next step)."""
        return "Canceled." if self.started_at is None else "Canceled: the worker stops at its next step."

    def give_back(self) -> bool:
        """Back to queued, its attempt not counted, when its worker was stopped (SIGTERM): it starts
        again from the beginning, on another worker or this one after its restart."""
        with transaction.atomic():
            ok = self._transition([JobStatus.RUNNING], status=JobStatus.QUEUED, attempts=models.F("attempts") - 1,
                                  started_at=None, heartbeat_at=None, first_step_at=None, progress_step=0)
            if ok:
                self.enqueue()
        return ok

    def requeue(self) -> bool:
        """Back to queued after its worker died, and queue the task again."""
        with transaction.atomic():
            ok = self._transition([JobStatus.RUNNING], status=JobStatus.QUEUED, heartbeat_at=None)
            if ok:
                self.enqueue()
        return ok


def eta_words(seconds: float) -> str:
    """"finishing…" under a second, "about N s left" under a minute, else "about N min left"."""
    if seconds < 1:
        return "finishing…"
    if seconds < 59.5:
        return f"about {round(seconds)} s left"
    return f"about {max(1, round(seconds / 60))} min left"


@contextmanager
def heartbeat(job: Job, every_s: float | None = None) -> Iterator[None]:
    """Beat the job's heartbeat from a thread while the body runs (model loading included), so a
    live job is never mistaken for a dead one, and a dead worker's job goes stale."""
    every_s = every_s or settings.IMAGESITE_HEARTBEAT_S
    stop = threading.Event()
    model = type(job)

    def beat() -> None:
        try:
            while not stop.wait(every_s):
                model.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{job.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class ProgressReporter:
    """Progress callback for the ML code: writes at most every `interval_s` (and on the last step),
    and between writes reads the row for a cancel at most every `cancel_check_s`, so a cancel stops
    the job within a step or so without a query per step on fast models. Raises JobCanceled."""

    def __init__(self, job: Job, interval_s: float = 0.25, cancel_check_s: float = 0.1):
        self.job = job
        self.interval_s, self.cancel_check_s = interval_s, cancel_check_s
        self.last_write = self.last_check = 0.0

    def __call__(self, step: int, total: int, **extra) -> None:
        stopping.check()  # the worker was asked to stop: this job goes back to the queue (run_claimed)
        now = time.monotonic()
        if step >= total or now - self.last_write >= self.interval_s:
            self.last_write = self.last_check = now
            self.job.report_progress(step, total, **extra)
        elif now - self.last_check >= self.cancel_check_s:
            self.last_check = now
            if self.job.is_canceled():
                raise JobCanceled()


# Absolute file-system paths (two segments or more) in a message: a person sees the file's name only.
_PATH_RE = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"]+/)+([^\s/'\",;:)]*)")


def without_paths(message: str) -> str:
    """`message` with every server path cut to its last part ("/srv/media/runs/7/x.bin" → "x.bin"),
    so a failure never shows where the server keeps its files."""
    return _PATH_RE.sub(lambda m: m.group(1) or "(a folder)", message)


JOB_MODELS = ("generation.Generation", "training.TrainingRun")


def reap_stale_jobs(stale_after_s: float | None = None) -> dict[str, int]:
    """Find running jobs whose heartbeat stopped (their worker was killed: OOM killer, SIGKILL, power
    loss) and requeue them while attempts remain, else fail them. Returns counts by outcome. Run
    every minute with the queue's wake-ups (imagesite.queue.keep_queues_moving).

    django-q2's ORM broker would redeliver such a task again and again (django-q2 #327); the claim()
    guard on attempts makes those redeliveries no-ops once the row has moved on."""
    stale_after_s = stale_after_s if stale_after_s is not None else settings.IMAGESITE_STALE_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    counts = {"requeued": 0, "failed": 0}
    for model in job_models():
        for outcome, n in reap_stale(model, cutoff).items():
            counts[outcome] += n
    return counts


def reap_stale(model: type[Job], cutoff, failure: str | None = None) -> dict[str, int]:
    """`model`'s running jobs whose heartbeat is older than `cutoff`: requeued while attempts remain,
    else failed with `failure` (default: the worker stopped N times). Counts by outcome."""
    counts = {"requeued": 0, "failed": 0}
    label = model._meta.label
    for job in model.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        if job.attempts < settings.IMAGESITE_MAX_ATTEMPTS and job.requeue():
            log.warning("requeued %s %s after its worker stopped", label, job.pk)
            counts["requeued"] += 1
        elif job.fail(failure or (f"The worker stopped while running this job ({job.attempts} attempt"
                                  f"{'s' if job.attempts != 1 else ''}); it was not retried again.")):
            log.warning("failed %s %s after %s attempts", label, job.pk, job.attempts)
            counts["failed"] += 1
    return counts


def job_models() -> list[type[Job]]:
    found = []
    for label in JOB_MODELS:
        try:
            found.append(apps.get_model(label))
        except LookupError:
            continue
    return found


def ensure_every_minute(func: str, name: str, using: str = "default") -> None:
    """A django-q2 schedule that runs the task `func` every minute on the default cluster, for the
    sweeps that keep jobs from being lost. Made once: an admin's later change to it is kept."""
    from django_q.models import Schedule

    Schedule.objects.using(using).get_or_create(
        func=func, defaults={"name": name, "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
    )


def ensure_reaper_schedule(using: str = "default", **kwargs) -> None:
    """post_migrate receiver (imagesite.apps): the reaper and the queue's wake-ups every minute
    (imagesite.queue.keep_queues_moving; a schedule made for the reaper alone is moved onto it)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).filter(func="imagesite.jobs.reap_stale_jobs").update(func=REAPER_TASK)
    ensure_every_minute(REAPER_TASK, "reap stale jobs", using)


REAPER_TASK = "imagesite.queue.keep_queues_moving"
