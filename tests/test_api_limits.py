"""Per-user limits: generations per hour and the queued-jobs cap answer 429 with Retry-After; staff
set limits per user in the admin."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from imagesite.models import UserLimits
from generation.models import Generation
from imagesite.jobs import JobStatus

from .api_support import assert_error, other_api, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation

pytestmark = pytest.mark.django_db

URL = "/api/v1/generations/"


def test_generations_per_hour_gives_429_with_retry_after(owner, owner_api):
    UserLimits.objects.create(user=owner, generations_per_hour=2)
    oldest = make_generation(owner, status=JobStatus.SUCCEEDED)
    Generation.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(minutes=50))
    make_generation(owner, status=JobStatus.SUCCEEDED)
    response = owner_api.post(URL, {"prompt": "one more"}, format="json")
    body = assert_error(response, 429)
    assert body["code"] == "throttled"
    assert 9 * 60 <= int(response["Retry-After"]) <= 10 * 60 + 1  # when the oldest leaves the hour
    assert Generation.objects.count() == 2


def test_old_generations_do_not_count(owner, owner_api):
    UserLimits.objects.create(user=owner, generations_per_hour=1)
    old = make_generation(owner, status=JobStatus.SUCCEEDED)
    Generation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert owner_api.post(URL, {"prompt": "fine"}, format="json").status_code == 202


def test_queued_jobs_cap(owner, owner_api, other_api):
    UserLimits.objects.create(user=owner, max_queued_jobs=2)
    make_generation(owner)
    make_generation(owner, status=JobStatus.RUNNING)
    make_generation(owner, status=JobStatus.SUCCEEDED)  # finished jobs do not count
    response = owner_api.post(URL, {"prompt": "a third"}, format="json")
    assert_error(response, 429)
    assert int(response["Retry-After"]) > 0
    assert other_api.post(URL, {"prompt": "someone else"}, format="json").status_code == 202  # per user


def test_limits_do_not_apply_to_reads(owner, owner_api):
    UserLimits.objects.create(user=owner, generations_per_hour=0, max_queued_jobs=0)
    assert owner_api.get(URL).status_code == 200
    assert_error(owner_api.post(URL, {"prompt": "no"}, format="json"), 429)


def test_invalid_input_under_the_limit_is_still_400(owner, owner_api):
    assert_error(owner_api.post(URL, {"prompt": ""}, format="json"), 400, "prompt")


def test_staff_set_limits_in_the_admin(owner, django_user_model, client):
    staff = django_user_model.objects.create_superuser("boss", password="x" * 12)
    client.force_login(staff)
    assert client.get("/admin/imagesite/userlimits/add/").status_code == 200
    response = client.post("/admin/imagesite/userlimits/add/", {"user": owner.pk, "generations_per_hour": 3, "max_queued_jobs": 1, "priority": 0})
    assert response.status_code == 302
    limits = UserLimits.objects.get(user=owner)
    assert limits.generations_per_hour == 3 and limits.uploads_per_hour is None


def test_a_training_runs_validation_images_do_not_count(owner, owner_api):
    from training.models import Subject, TrainingRun

    UserLimits.objects.create(user=owner, generations_per_hour=1)
    run = TrainingRun.objects.create(subject=Subject.objects.create(owner=owner, name="S", token="sks", class_noun="shape"), status=JobStatus.SUCCEEDED)
    make_generation(owner, status=JobStatus.SUCCEEDED, training_run=run)
    assert owner_api.post(URL, {"prompt": "mine"}, format="json").status_code == 202
    assert owner_api.get("/api/v1/me/").json()["usage"]["generations_last_hour"] == 1
