"""The queue in the API: a queued job's place, and retrying a failed one (same rules as the pages)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from imagesite.jobs import JobStatus
from imagesite.models import QueueControl, UserLimits
from training.models import Subject, TrainingRun

from .api_support import owner_api  # noqa: F401  (fixture)
from .factories import make_generation

pytestmark = pytest.mark.django_db


def test_a_queued_generation_says_where_it_stands(owner, other_user, owner_api):
    now = timezone.now()
    make_generation(other_user, created_at=now - timedelta(seconds=10))
    mine = make_generation(owner, created_at=now)
    done = make_generation(owner, status=JobStatus.SUCCEEDED, started_at=now - timedelta(seconds=9), finished_at=now - timedelta(seconds=1),
                           gpu_seconds=7.5)
    body = owner_api.get(f"/api/v1/generations/{mine.pk}/").json()
    # the owner was served a moment ago, the other user never: theirs goes first
    assert body["queue"] == {"ahead": 1, "eta_s": 8.0, "paused": None, "text": "1 ahead of you, about 8 s"}
    assert owner_api.get(f"/api/v1/generations/{done.pk}/").json()["queue"] is None
    assert owner_api.get(f"/api/v1/generations/{done.pk}/").json()["gpu_seconds"] == 7.5
    QueueControl.objects.create(pk=1, paused=True, reason="Upgrading drivers.")
    assert owner_api.get(f"/api/v1/generations/{mine.pk}/").json()["queue"]["paused"] == "Upgrading drivers."


def test_retry_through_the_api(owner, owner_api):
    failed = make_generation(owner, status=JobStatus.FAILED, error="boom")
    answer = owner_api.post(f"/api/v1/generations/{failed.pk}/retry/")
    assert answer.status_code == 200 and answer.json()["status"] == "queued" and answer.json()["error"] == ""
    assert owner_api.post(f"/api/v1/generations/{failed.pk}/retry/").status_code == 409  # queued now
    canceled = make_generation(owner, status=JobStatus.CANCELED)
    UserLimits.objects.create(user=owner, max_queued_jobs=1)
    assert owner_api.post(f"/api/v1/generations/{canceled.pk}/retry/").status_code == 429
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.FAILED)
    UserLimits.objects.filter(user=owner).update(max_queued_jobs=5)
    answer = owner_api.post(f"/api/v1/training-runs/{run.pk}/retry/")
    assert answer.status_code == 200 and answer.json()["queue"]["ahead"] == 0
