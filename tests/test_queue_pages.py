"""Where a queued job stands, and a retry, on the job pages (imagesite.queue through the page views)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from generation.models import Generation
from imagesite.jobs import JobStatus
from imagesite.models import QueueControl, UserLimits
from training.models import Subject, TrainingRun

from .factories import make_generation

pytestmark = pytest.mark.django_db


def test_a_queued_job_page_says_how_many_are_ahead_and_when_the_queue_is_paused(owner, other_user, owner_client):
    now = timezone.now()
    make_generation(other_user, created_at=now - timedelta(seconds=30))
    make_generation(other_user, status=JobStatus.SUCCEEDED, started_at=now - timedelta(minutes=9), finished_at=now - timedelta(minutes=8, seconds=40))
    mine = make_generation(owner, created_at=now)
    page = owner_client.get(reverse("generation-detail", args=[mine.pk])).content.decode()
    assert "next in line" in page  # never served goes first
    make_generation(owner, status=JobStatus.SUCCEEDED, started_at=now - timedelta(minutes=1), finished_at=now - timedelta(seconds=40))
    page = owner_client.get(reverse("generation-detail", args=[mine.pk])).content.decode()
    assert "1 ahead of you, about 20 s" in page  # served more recently than the other user; 20 s a job
    QueueControl.objects.create(pk=1, paused=True, reason="Maintenance until 14:00.")
    assert "the queue is paused: Maintenance until 14:00." in owner_client.get(reverse("generation-detail", args=[mine.pk])).content.decode()


def test_the_owner_retries_a_failed_job_within_their_cap(owner, owner_client):
    failed = make_generation(owner, status=JobStatus.FAILED, error="Out of GPU memory")
    page = owner_client.get(reverse("generation-detail", args=[failed.pk])).content.decode()
    assert reverse("generation-retry", args=[failed.pk]) in page
    UserLimits.objects.create(user=owner, max_queued_jobs=1)
    make_generation(owner)  # the one queued job the cap allows
    answer = owner_client.post(reverse("generation-retry", args=[failed.pk]), follow=True)
    assert "at most 1 may wait at once" in answer.content.decode()
    assert Generation.objects.get(pk=failed.pk).status == JobStatus.FAILED
    UserLimits.objects.filter(user=owner).update(max_queued_jobs=2)
    owner_client.post(reverse("generation-retry", args=[failed.pk]))
    assert Generation.objects.get(pk=failed.pk).status == JobStatus.QUEUED


def test_nobody_retries_another_users_job_and_a_run_retries_only_while_its_subject_is_idle(owner, other_user, owner_client):
    theirs = make_generation(other_user, status=JobStatus.FAILED)
    assert owner_client.post(reverse("generation-retry", args=[theirs.pk])).status_code == 404
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    failed = TrainingRun.objects.create(subject=subject, status=JobStatus.FAILED)
    TrainingRun.objects.create(subject=subject)  # a newer run is queued
    answer = owner_client.post(reverse("training-run-retry", args=[failed.pk]), follow=True)
    assert "already training" in answer.content.decode() and TrainingRun.objects.get(pk=failed.pk).status == JobStatus.FAILED


def test_a_job_waiting_for_the_gpu_says_so_on_its_page(owner, owner_client):
    """The phase the worker writes while the other cluster holds the GPU lease (generation.gpu_lease:
    tests/test_gpu_lease.py reads this page while a real task waits)."""
    job = make_generation(owner, status=JobStatus.RUNNING, started_at=timezone.now(), phase="waiting_gpu")
    page = owner_client.get(reverse("generation-detail", args=[job.pk])).content.decode()
    assert "waiting for the GPU: a training run is using it" in page
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, phase="waiting_gpu")
    page = owner_client.get(reverse("training-run-detail", args=[run.pk])).content.decode()
    assert "waiting for the GPU: a generation job is finishing on it" in page
