"""The job row is the queue: a worker claims the next job from the database, in the scheduler's order.

A broker message only wakes a worker. What it runs is decided here, from the rows: round-robin across
owners (the least recently served owner with queued work goes next, as InvokeAI's multi-user queue
does), FIFO within an owner. The claim is atomic on both databases: PostgreSQL locks the candidates
with `SELECT … FOR UPDATE SKIP LOCKED` (two workers never wait on each other's row); SQLite takes its
write lock for a conditional UPDATE (`… WHERE status = 'queued'`), so a row goes to one worker only.
A lost, duplicated or locked broker message can neither lose a job nor run one twice: any message
wakes a worker for whatever is next, and a job without a message is found by the next one.

Generic over the concrete Job models; each names the path to its owner in `owner_path`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Callable

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Avg, F, Max, Q
from django.utils import timezone

from .jobs import Job, JobStatus, eta_words, job_models, reap_stale_jobs
from .runner import run_claimed

log = logging.getLogger("imagesite.queue")

# How many of the next jobs in fair order a worker tries to lock at once (PostgreSQL): enough that
# workers racing for the head of the queue each find one free without waiting.
CANDIDATES = 16
# How many recent jobs the ETA's average duration is taken from.
RECENT_FOR_ETA = 20
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.get_fixed_timezone(0))


def owner_path(model: type[Job]) -> str:
    return getattr(model, "owner_path", "owner")


def fair_order(model: type[Job]) -> list[int]:
    """The pks of the model's queued jobs, in the order workers will take them if nothing else
    arrives: owners with a higher priority (staff set it) first; among equals, round r holds each
    owner's r-th queued job, owners ordered by when they were last served (never served first), ties
    by their oldest queued job."""
    owner_field = owner_path(model)
    queued = model.objects.filter(status=JobStatus.QUEUED).order_by("created_at", "pk").values_list("pk", owner_field)
    per_owner: OrderedDict[int, list[int]] = OrderedDict()
    for pk, owner_id in queued:
        per_owner.setdefault(owner_id, []).append(pk)
    if not per_owner:
        return []
    served = dict(
        model.objects.filter(**{f"{owner_field}__in": list(per_owner)}, started_at__isnull=False)
        .order_by().values(owner_field).annotate(last=Max("started_at")).values_list(owner_field, "last")
    )
    priority = _priorities(per_owner)
    # per_owner is in order of each owner's oldest queued job: a stable tie-break.
    owners = sorted(per_owner, key=lambda owner: served.get(owner) or EPOCH)
    order: list[int] = []
    for level in sorted({priority.get(owner, 0) for owner in owners}, reverse=True):  # higher priority first
        peers = [owner for owner in owners if priority.get(owner, 0) == level]
        for round_ in range(max(len(per_owner[owner]) for owner in peers)):
            order.extend(per_owner[owner][round_] for owner in peers if round_ < len(per_owner[owner]))
    return order


def _priorities(owner_ids) -> dict[int, int]:
    """Owners' queue priority set by staff (imagesite.UserLimits.priority; 0 when unset)."""
    from .models import UserLimits

    return dict(UserLimits.objects.filter(user_id__in=list(owner_ids)).exclude(priority=0).values_list("user_id", "priority"))


def queue_paused() -> str | None:
    """The operator's reason when the queue is paused (imagesite.QueueControl), else None."""
    from .models import QueueControl

    row = QueueControl.objects.filter(pk=1).values_list("paused", "reason").first()
    if row is None or not row[0]:
        return None
    return row[1] or "The operator paused the queue."


def claim_next(model: type[Job]) -> Job | None:
    """Take the next job in fair order for this worker: queued → running, attempt counted. None when
    nothing is queued, everything queued is being taken by other workers right now, or the operator
    paused the queue."""
    return _claim_in_fair_order(model)[0]


def _claim_in_fair_order(model: type[Job]) -> tuple[Job | None, list[int]]:
    """claim_next, and the fair order the job was claimed from (claim_batch looks further along it)."""
    if queue_paused() is not None:
        return None, []
    while True:
        order = fair_order(model)
        if not order:
            return None, []
        job = _claim_first(model, order[:CANDIDATES])
        if job is not None:
            return job, order
        # Every candidate went to another worker meanwhile: look again at what is left.


def _claim_first(model: type[Job], candidates: list[int]) -> Job | None:
    now = timezone.now()
    claim = {"status": JobStatus.RUNNING, "started_at": now, "heartbeat_at": now, "attempts": F("attempts") + 1}
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            free = set(model.objects.select_for_update(skip_locked=True)
                       .filter(pk__in=candidates, status=JobStatus.QUEUED).values_list("pk", flat=True))
            for pk in candidates:
                if pk in free:
                    model.objects.filter(pk=pk).update(**claim)
                    return model.objects.get(pk=pk)
        return None
    for pk in candidates:  # SQLite: the conditional UPDATE runs under the database's write lock
        if model.objects.filter(pk=pk, status=JobStatus.QUEUED).update(**claim):
            return model.objects.get(pk=pk)
    return None


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued job stands: how many jobs run before it and about how long until it starts."""

    ahead: int
    eta_s: float | None  # None until a job of this kind has finished (nothing to estimate from)

    def words(self) -> str:
        who = "next in line" if self.ahead == 0 else f"{self.ahead} ahead of you"
        if self.eta_s is None:
            return who
        if self.eta_s < 1:
            return f"{who}, starting soon"
        return f"{who}, {eta_words(self.eta_s).replace(' left', '')}"


def place_in_queue(job: Job) -> QueuePlace | None:
    """The job's place in the fair order and an estimate of its start; None when it is not queued."""
    return QueueSnapshot(type(job)).place(job)


class QueueSnapshot:
    """One read of a kind's queue (its fair order, then lazily the ETA's inputs), so the places of
    many jobs (an API list) cost what one does."""

    def __init__(self, model: type[Job]) -> None:
        self.model = model
        self._ahead = {pk: index for index, pk in enumerate(fair_order(model))}

    def place(self, job: Job) -> QueuePlace | None:
        ahead = self._ahead.get(job.pk)
        if ahead is None:
            return None
        if self._pace is None:
            return QueuePlace(ahead=ahead, eta_s=None)
        first_free, mean_s, workers = self._pace
        return QueuePlace(ahead=ahead, eta_s=first_free + ahead * mean_s / workers)

    @cached_property
    def _pace(self) -> tuple[float, float, int] | None:
        """(seconds until the first worker is free, the recent average duration, workers): a job
        starts after the running jobs' remaining time, then the queued ones ahead at the average,
        shared by as many workers as run now. None until a job of this kind has finished."""
        model = self.model
        recent = (model.objects.filter(status=JobStatus.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False)
                  .order_by("-finished_at")[:RECENT_FOR_ETA])
        average = recent.aggregate(avg=Avg(F("finished_at") - F("started_at"), output_field=models.DurationField()))["avg"]
        if average is None:
            return None
        mean_s = average.total_seconds() if isinstance(average, timedelta) else float(average) / 1e6
        running = list(model.objects.filter(status=JobStatus.RUNNING))
        remaining = [job.eta_seconds if job.eta_seconds is not None else mean_s for job in running]
        return (min(remaining) if remaining else 0.0), mean_s, max(1, len(running))




def run_next(model: type[Job], work: Callable[[Job], None], **kwargs) -> str:
    """A worker's task for any broker message of `model`'s kind: claim the next job in fair order and
    run it (imagesite.runner.run_claimed: heartbeat, readable failure, cleanup). The message's own job id
    is only a wake-up: a duplicated message finds nothing or the next job; a lost one is made up by the
    next message or by the reaper's wake-up."""
    job = claim_next(model)
    if job is None:
        return "nothing queued"
    return run_claimed(job, work, **kwargs)


# Half a minute: wake-ups only go to jobs short of a message (_short_of_messages), so the wait only
# has to outlast an enqueue in flight; the sweep's first run after a cluster's start (django-q2's
# scheduler looks every 30 s) then finds every job of a killed stack old enough.
WAKE_AFTER_S = 30
MAX_WAKES = 8
# A running job counts as worked on while its heartbeat is younger than this many beats
# (IMAGESITE_HEARTBEAT_S); an older one's worker is presumably dead, though not yet reaped.
LIVE_BEATS = 3


def wake_idle_queues(job_models: list[type[Job]], wake_after_s: float | None = None) -> dict[str, int]:
    """Send wake-up messages for queued jobs nobody is working on: jobs queued over `wake_after_s`
    (WAKE_AFTER_S) while none of their kind runs (their broker message was lost, or is
    held by a killed cluster until django-q2's retry, 35 minutes on). A job whose heartbeat stopped
    a few beats ago does not count as running: after a SIGKILL of the whole stack its row says
    "running" until the reaper's IMAGESITE_STALE_AFTER_S, and the queued jobs must not wait for
    that. A spare wake-up finds nothing queued and ends at once. Called by the reaper every minute
    (not while the operator paused the queue). Returns the wake-ups sent per kind."""
    if queue_paused() is not None:
        return {}
    now = timezone.now()
    cutoff = now - timedelta(seconds=WAKE_AFTER_S if wake_after_s is None else wake_after_s)
    live = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__gte=now - timedelta(seconds=LIVE_BEATS * settings.IMAGESITE_HEARTBEAT_S))
    sent: dict[str, int] = {}
    for model in job_models:
        if model.objects.filter(live, status=JobStatus.RUNNING).exists():
            continue  # a live worker: jobs short of a message wait for a sweep that finds it idle
        waiting = model.objects.filter(status=JobStatus.QUEUED, created_at__lt=cutoff).count()
        if waiting and (count := _wake(model, min(waiting, _short_of_messages(model)))):
            sent[model._meta.label] = count
    return sent


def _short_of_messages(model: type[Job]) -> int:
    """How many of the kind's queued jobs have no message a cluster can take now (ORM broker: not
    locked by a cluster; Redis: in the list). Wake-ups are sent for those only, so they never pile
    up while the kind's cluster is down (a site without a training cluster: one a minute, forever)."""
    from django_q.brokers import get_broker

    queued = model.objects.filter(status=JobStatus.QUEUED).count()
    try:
        deliverable = get_broker(model.cluster).queue_size()
    except Exception:  # noqa: BLE001 - the broker cannot say: wake as if no message were there
        log.warning("could not count the %s broker's messages", model.cluster or "default", exc_info=True)
        deliverable = 0
    return max(0, queued - deliverable)


def wake_queued(job_models: list[type[Job]]) -> dict[str, int]:
    """Wake workers for every kind with queued jobs (the operator resumed the queue: the messages
    that came while it was paused found nothing to claim)."""
    sent = {model._meta.label: _wake(model, model.objects.filter(status=JobStatus.QUEUED).count()) for model in job_models}
    return {label: count for label, count in sent.items() if count}


def _wake(model: type[Job], waiting: int) -> int:
    from django_q.tasks import async_task

    count = min(waiting, MAX_WAKES)
    for _ in range(count):
        kwargs = {"task_name": f"{model._meta.model_name}-wake"} | ({"cluster": model.cluster} if model.cluster else {})
        async_task(model.task_path, 0, **kwargs)
    return count


def keep_queues_moving(stale_after_s: float | None = None, wake_after_s: float | None = None) -> dict[str, int]:
    """The every-minute sweep: requeue or fail jobs whose worker died (imagesite.jobs.reap_stale_jobs),
    then wake workers for jobs queued with nobody working on them. The thresholds default to
    IMAGESITE_STALE_AFTER_S and WAKE_AFTER_S (tests pass small ones)."""
    counts = reap_stale_jobs(stale_after_s)
    for label, count in wake_idle_queues(job_models(), wake_after_s).items():
        log.warning("sent %s wake-up(s) for %s jobs queued with no worker on them", count, label)
        counts["woken"] = counts.get("woken", 0) + count
    return counts


RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELED)


def retry_job(job: Job, *, check_quota: bool = True) -> bool:
    """A failed or canceled job back in the queue as it was: error, progress and attempts start afresh.
    Its owner (pages, API) passes the owner's queue cap; staff in the admin may skip it. A model can
    refuse in `before_retry()` (a training run: not while its subject trains). False when the job is
    not failed or canceled (any more)."""
    from .quotas import admit

    with transaction.atomic():
        if check_quota:
            admit(job.owner, "max_queued_jobs")
        if hasattr(job, "before_retry"):
            job.before_retry()
        fields = {"status": JobStatus.QUEUED, "error": "", "attempts": 0, "progress_step": 0, "progress_total": 0,
                  "started_at": None, "finished_at": None, "heartbeat_at": None, "first_step_at": None}
        if any(field.name == "phase" for field in job._meta.fields):
            fields["phase"] = ""
        ok = job._transition(RETRYABLE, **fields)
        if ok:
            job.enqueue()
    return ok


def claim_batch(model: type[Job], batch_key: Callable[[Job], object], *, max_jobs: int,
                size: Callable[[Job], int] = lambda job: 1, max_size: int | Callable[[Job], int] | None = None) -> list[Job]:
    """Claim the next job in fair order and, with it, queued jobs the worker can run in the same
    pipeline call: those whose `batch_key` equals the first one's (a key of None: never batched), up
    to `max_jobs` jobs and `max_size` in all (`size`: e.g. a job's image count; `max_size` may be a
    function of the first job: what the memory plan holds at its size). The fair order holds:
    a job joins only if it is next anyway (the unbroken run of compatible jobs after the first) or it
    is its owner's next job (each owner's first in the order), so a batch never puts one user's
    later jobs before another user's. Returns [] when nothing is queued."""
    first, order = _claim_in_fair_order(model)
    if first is None:
        return []
    key = batch_key(first)
    if key is None or max_jobs <= 1:
        return [first]
    if callable(max_size):
        max_size = max_size(first)
    # The order read before the claim, less the first job, is the order after it: the first's owner,
    # served now, moves from the head of its round to the end, which is where its next job stood.
    order = [pk for pk in order if pk != first.pk][: max_jobs * 8]  # enough to look past other users' jobs
    queued = model.objects.filter(status=JobStatus.QUEUED).in_bulk(order)
    owner_field = owner_path(model)
    batch, total = [first], size(first)
    owners_seen, unbroken = {_owner_of(first, owner_field)}, True  # the first job was its owner's next
    for pk in order:
        job = queued.get(pk)
        if job is None:
            continue  # taken by another worker since the order was read
        owner = _owner_of(job, owner_field)
        owners_next = owner not in owners_seen
        owners_seen.add(owner)
        fits = batch_key(job) == key and (max_size is None or total + size(job) <= max_size)
        if not fits:
            unbroken = False
            continue
        if (unbroken or owners_next) and (claimed := _claim_first(model, [pk])) is not None:
            batch.append(claimed)
            total += size(job)
            if len(batch) >= max_jobs:
                break
    return batch


def _owner_of(job: Job, owner_field: str):
    value = job
    for part in owner_field.split("__"):
        value = getattr(value, part)
    return getattr(value, "pk", value)
