"""Per-user limits, admitted in the same transaction as the insert they guard.

Every service that creates work calls `admit(owner, <limit names>, adding=n)` inside its
`transaction.atomic()` block, before the insert. `admit` first takes the user's lock (their row in
the users table: `SELECT … FOR UPDATE` on PostgreSQL; on SQLite every write transaction already holds
the database's single write lock, see settings' IMMEDIATE mode), then counts the user's rows. Two
requests of one user therefore count and insert one after the other, whichever edge they came from
(page or API): a cap can never be passed by racing it.

The rows counted belong to other apps; each app registers what it counts in its `AppConfig.ready()`
(`register(...)`), so this bottom layer imports none of them. A refusal is one exception type,
`QuotaExceeded`: pages show its message, the API answers 429 with `Retry-After` (api.errors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import QuerySet, Sum
from django.utils import timezone

LIMIT_NAMES = ("generations_per_hour", "uploads_per_hour", "trainings_per_day", "max_queued_jobs", "gpu_seconds_per_day")
# Limits that sum a field of the rows rather than count them; for these 0 means no cap.
SUMMED = {"gpu_seconds_per_day": "gpu_seconds"}
# No row says when a queued job will end, so a refusal by the queue cap suggests a short wait.
QUEUE_RETRY_AFTER_S = 15


@dataclass(frozen=True)
class Counter:
    """What counts against a limit: `rows(user)` (rows with `created_at`), within `window` when set."""

    rows: Callable[[object], QuerySet]
    window: timedelta | None = None
    measure: str | None = None  # a field to sum instead of counting rows


_COUNTERS: dict[str, list[Counter]] = {name: [] for name in LIMIT_NAMES}

# What a refusal says, by limit: formatted with limit, used, adding and wait (a readable duration).
_REFUSALS = {
    "max_queued_jobs": "You have {used} jobs queued or running, and at most {limit} may wait at once. "
                       "Wait for one to finish or cancel one, then try again.",
    "generations_per_hour": "You reached your limit of {limit} generations per hour. Try again in {wait}.",
    "uploads_per_hour": "You may upload {limit} photos per hour and have uploaded {used}; {adding} more would pass it. "
                        "Try again in {wait}.",
    "trainings_per_day": "You reached your limit of {limit} training runs per day. Try again in {wait}.",
    "gpu_seconds_per_day": "You used {used} GPU-seconds of your {limit} per day. Try again in {wait}.",
}


class QuotaExceeded(Exception):
    """A limit refused the work. `message` is for the person; `retry_after_s` for Retry-After."""

    def __init__(self, limit_name: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.limit_name, self.message, self.retry_after_s = limit_name, message, retry_after_s


def register(limit_name: str, rows: Callable[[object], QuerySet], *, window: timedelta | None = None) -> None:
    """Count `rows(user)` against `limit_name`. Called once per app and process, from its `ready()`."""
    if limit_name not in _COUNTERS:
        raise ValueError(f"unknown limit {limit_name!r}")
    _COUNTERS[limit_name].append(Counter(rows=rows, window=window, measure=SUMMED.get(limit_name)))


def limits_for(user) -> dict[str, int]:
    """The user's effective limits: their overrides (imagesite.UserLimits) over the site defaults."""
    from .models import UserLimits

    values = dict(settings.IMAGESITE_API_LIMITS)
    override = UserLimits.objects.filter(user=user).first()
    if override:
        for name in LIMIT_NAMES:
            if getattr(override, name) is not None:
                values[name] = getattr(override, name)
    return values


def _counted(counter: Counter, user, now) -> QuerySet:
    rows = counter.rows(user)
    return rows.filter(created_at__gte=now - counter.window) if counter.window else rows


def _used(counter: Counter, user, now) -> int:
    rows = _counted(counter, user, now)
    if counter.measure is None:
        return rows.count()
    return round(rows.aggregate(total=Sum(counter.measure))["total"] or 0)


def usage(user, *names: str) -> dict[str, int]:
    """How much of each limit (or of the `names` given) the user uses now."""
    now = timezone.now()
    return {name: sum(_used(c, user, now) for c in _COUNTERS[name]) for name in names or _COUNTERS}


def lock_user(user) -> None:
    """Serialise this user's admissions until the transaction ends (see the module docstring)."""
    if not connection.in_atomic_block:
        raise RuntimeError("admit() must run inside the transaction of the insert it guards")
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))


def _wait_s(name: str, user, limit: int, used: int, adding: int, now) -> int:
    """Seconds until `adding` more fit: when enough of the counted rows (of a summed limit: enough of
    their GPU-seconds) have left their window."""
    windows = [c for c in _COUNTERS[name] if c.window]
    if not windows:
        return QUEUE_RETRY_AFTER_S
    window = windows[0].window
    if adding > limit:
        return math.ceil(window.total_seconds())
    # What has to leave the window: enough rows for `adding` more, or (summed) more than the excess.
    excess = used - limit if name in SUMMED else used + adding - limit - 1
    rows = sorted(row for c in windows for row in _amounts(c, user, now))
    leaving, gone = (rows[-1][0] if rows else now), 0.0
    for created_at, amount in rows:
        gone += amount
        if gone > excess:
            leaving = created_at
            break
    return max(1, math.ceil((leaving + window - now).total_seconds()))


def _amounts(counter: Counter, user, now) -> list[tuple]:
    """(created_at, what the row adds to the limit's use) for each counted row."""
    rows = _counted(counter, user, now)
    if counter.measure is None:
        return [(created_at, 1) for created_at in rows.values_list("created_at", flat=True)]
    return list(rows.values_list("created_at", counter.measure))


def _readable(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"


def admit(owner, *limit_names: str, adding: int = 1) -> None:
    """Raise QuotaExceeded unless `adding` more rows fit under each named limit of `owner`. Call it
    inside the transaction that then inserts them."""
    lock_user(owner)
    limits = limits_for(owner)
    now = timezone.now()
    for name in limit_names:
        limit = limits[name]
        used = sum(_used(c, owner, now) for c in _COUNTERS[name])
        over = (limit and used >= limit) if name in SUMMED else used + adding > limit  # time: once spent
        if over:
            wait = _wait_s(name, owner, limit, used, adding, now)
            message = _REFUSALS[name].format(limit=limit, used=used, adding=adding, wait=_readable(wait))
            raise QuotaExceeded(name, message, wait)
