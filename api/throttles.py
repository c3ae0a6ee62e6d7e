"""Per-user limits on creating generations, uploading photos and training, plus a cap on queued jobs.

They count the user's own rows in the database rather than a cache: the rows are the truth, shared by
every web process and machine, and they tell exactly when the oldest one leaves the window (which is
what Retry-After says). Limits come from api.limits_for (site defaults, staff overrides per user).
"""
from __future__ import annotations

import math
from datetime import timedelta

from django.apps import apps
from django.utils import timezone
from rest_framework.throttling import BaseThrottle

from imagesite.jobs import ACTIVE_STATUSES

from .models import limits_for

# Retry-After for the queue cap: no row says when a queued job will end, so suggest a short poll.
QUEUE_RETRY_AFTER_S = 15


class WindowThrottle(BaseThrottle):
    """At most `limits[limit_name]` rows of `model` made by the user within `window`."""

    model_label: str = ""
    owner_lookup: str = "owner"
    limit_name: str = ""
    window: timedelta = timedelta(hours=1)
    extra_filter: dict = {}

    def allow_request(self, request, view) -> bool:
        self._wait = None
        try:
            model = apps.get_model(self.model_label)
        except LookupError:
            return True
        limit = limits_for(request.user)[self.limit_name]
        since = timezone.now() - self.window
        recent = model.objects.filter(**{self.owner_lookup: request.user, "created_at__gte": since}, **self.extra_filter)
        if recent.count() < limit:
            return True
        oldest = recent.order_by("created_at").values_list("created_at", flat=True).first()
        self._wait = max(1, math.ceil(((oldest or since) + self.window - timezone.now()).total_seconds())) if limit else self.window.total_seconds()
        return False

    def wait(self) -> float | None:
        return self._wait


class GenerationRateThrottle(WindowThrottle):
    model_label = "generation.Generation"
    limit_name = "generations_per_hour"
    # Validation images a training run draws are generations too, but the user did not ask for them.
    extra_filter = {"training_run__isnull": True}


class UploadRateThrottle(WindowThrottle):
    model_label = "training.SubjectPhoto"
    owner_lookup = "subject__owner"
    limit_name = "uploads_per_hour"


class TrainingRateThrottle(WindowThrottle):
    model_label = "training.TrainingRun"
    owner_lookup = "subject__owner"
    limit_name = "trainings_per_day"
    window = timedelta(days=1)


def active_job_count(user) -> int:
    total = 0
    for label, owner_lookup in (("generation.Generation", "owner"), ("training.TrainingRun", "subject__owner")):
        try:
            model = apps.get_model(label)
        except LookupError:
            continue
        total += model.objects.filter(**{owner_lookup: user, "status__in": ACTIVE_STATUSES}).count()
    return total


class QueuedJobsThrottle(BaseThrottle):
    """A user may have at most `max_queued_jobs` queued or running jobs at once."""

    def allow_request(self, request, view) -> bool:
        return active_job_count(request.user) < limits_for(request.user)["max_queued_jobs"]

    def wait(self) -> float:
        return QUEUE_RETRY_AFTER_S
