"""The life of a background job, shared by generations and training runs.

queued → running → succeeded | failed | canceled. The database row is the truth about a job, not the
broker: the worker claims a row atomically, beats a heartbeat while it works, and every end state is
written with a conditional UPDATE so that a cancel racing a finish can never be overwritten.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.dispatch import Signal
from django.utils import timezone

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

    def report_progress(self, step: int, total: int) -> None:
        """Write progress and heartbeat; raise JobCanceled when the row was canceled meanwhile."""
        now = timezone.now()
        fields = {"progress_step": step, "progress_total": total, "heartbeat_at": now}
        if self.first_step_at is None:
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
            ACTIVE_STATUSES, status=JobStatus.FAILED, error=reason, finished_at=timezone.now()
        )

    def cancel(self) -> bool:
        """Queued jobs end at once; a running job stops at its next step (the worker sees the row)."""
        return self._transition(ACTIVE_STATUSES, status=JobStatus.CANCELED, finished_at=timezone.now())

    def cancel_notice(self) -> str:
        """What the person who just canceled it is told."""
        return "Canceled." if self.started_at is None else "Canceling: it stops at the next step."

    def requeue(self) -> bool:
        """Back to queued after its worker died, and queue the task again."""
        with transaction.atomic():
            ok = self._transition([JobStatus.RUNNING], status=JobStatus.QUEUED, heartbeat_at=None)
            if ok:
                self.enqueue()
        return ok


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


JOB_MODELS = ("generation.Generation", "training.TrainingRun")


def reap_stale_jobs(stale_after_s: float | None = None) -> dict[str, int]:
    """Find running jobs whose heartbeat stopped (their worker was killed: OOM killer, SIGKILL, power
    loss) and requeue them while attempts remain, else fail them. Returns counts by outcome.

    django-q2's ORM broker would redeliver such a task again and again (django-q2 #327); the claim()
    guard on attempts makes those redeliveries no-ops once the row has moved on."""
    stale_after_s = stale_after_s if stale_after_s is not None else settings.IMAGESITE_STALE_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    counts = {"requeued": 0, "failed": 0}
    for label in JOB_MODELS:
        try:
            model = apps.get_model(label)
        except LookupError:
            continue
        for job in model.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
            if job.attempts < settings.IMAGESITE_MAX_ATTEMPTS and job.requeue():
                log.warning("requeued %s %s after its worker stopped", label, job.pk)
                counts["requeued"] += 1
            elif job.fail(
                f"The worker stopped while running this job ({job.attempts} attempt"
                f"{'s' if job.attempts != 1 else ''}); it was not retried again."
            ):
                log.warning("failed %s %s after %s attempts", label, job.pk, job.attempts)
                counts["failed"] += 1
    return counts
