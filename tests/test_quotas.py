"""One way in: a limit binds the pages and the API alike, because the service admits the work in the
transaction of its insert (imagesite.quotas). The refusal is the same sentence on both edges."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from generation.models import Generation
from generation.services import create_generation
from imagesite import quotas
from imagesite.jobs import JobStatus
from imagesite.models import UserLimits
from training.models import Subject, TrainingRun

from .api_support import assert_error, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation

pytestmark = pytest.mark.django_db


def _page_errors(response) -> list[str]:
    return list(response.context["form"].non_field_errors())


def test_the_queue_cap_refuses_the_page_and_the_api_with_the_same_message(owner, owner_client, owner_api):
    UserLimits.objects.create(user=owner, max_queued_jobs=2)
    assert owner_api.post("/api/v1/generations/", {"prompt": "one"}, format="json").status_code == 202
    assert owner_client.post("/", {"prompt": "two", "steps": 2, "guidance_scale": 7.5, "width": 64, "height": 64,
                                            "scheduler": "dpmpp_2m", "num_images": 1}).status_code == 302
    api = owner_api.post("/api/v1/generations/", {"prompt": "three"}, format="json")
    page = owner_client.post("/", {"prompt": "three", "steps": 2, "guidance_scale": 7.5, "width": 64, "height": 64,
                                            "scheduler": "dpmpp_2m", "num_images": 1})
    body = assert_error(api, 429)
    assert api["Retry-After"] == str(quotas.QUEUE_RETRY_AFTER_S)
    assert page.status_code == 429
    assert _page_errors(page) == [body["detail"]]
    assert "at most 2 may wait at once" in body["detail"]
    assert page.context["form"]["prompt"].value() == "three"  # the page keeps what was typed
    assert Generation.objects.for_user(owner).count() == 2


def test_the_hourly_limit_counts_page_jobs_for_the_api(owner, owner_client, owner_api):
    UserLimits.objects.create(user=owner, generations_per_hour=1)
    create_generation(owner=owner, prompt="from the page")
    body = assert_error(owner_api.post("/api/v1/generations/", {"prompt": "from a script"}, format="json"), 429)
    assert "1 generations per hour" in body["detail"]


def test_validation_images_of_training_do_not_count_against_the_hourly_limit(owner):
    UserLimits.objects.create(user=owner, generations_per_hour=1)
    subject = Subject.objects.create(owner=owner, name="S", token="sks", class_noun="dog")
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED)
    make_generation(owner, status=JobStatus.SUCCEEDED, training_run=run)
    create_generation(owner=owner, prompt="mine")  # admitted: the validation image was not asked for
    assert Generation.objects.for_user(owner).filter(training_run__isnull=True).count() == 1


def test_retry_after_says_when_enough_rows_leave_the_window(owner):
    UserLimits.objects.create(user=owner, generations_per_hour=3)
    now = timezone.now()
    for minutes_ago in (55, 40, 10):
        generation = make_generation(owner, status=JobStatus.SUCCEEDED)
        Generation.objects.filter(pk=generation.pk).update(created_at=now - timedelta(minutes=minutes_ago))
    with pytest.raises(quotas.QuotaExceeded) as refused, transaction.atomic():
        quotas.admit(owner, "generations_per_hour", adding=2)
    # two must leave the hour: the second oldest (40 minutes ago) leaves in about 20 minutes
    assert 19 * 60 <= refused.value.retry_after_s <= 20 * 60 + 1
    assert refused.value.limit_name == "generations_per_hour"


@pytest.mark.django_db(transaction=True)
def test_admit_outside_a_transaction_is_a_programming_error(owner):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        quotas.admit(owner, "max_queued_jobs")


def test_the_training_start_page_shows_the_daily_limit(owner, owner_client):
    UserLimits.objects.create(user=owner, trainings_per_day=0)
    subject = Subject.objects.create(owner=owner, name="S", token="sks", class_noun="dog")
    response = owner_client.post(f"/subjects/{subject.pk}/train/", {"method": "lora", "steps": 5, "lora_rank": 4,
                                                                     "num_class_images": 0, "prior_loss_weight": 1.0, "prior_target": "base"})
    assert response.status_code == 429
    assert "training runs per day" in " ".join(_page_errors(response) if "training_form" not in response.context else
                                               response.context["training_form"].non_field_errors())
    assert not TrainingRun.objects.exists()


def test_usage_in_the_api_counts_what_the_quotas_count(owner, owner_api):
    make_generation(owner)
    make_generation(owner, status=JobStatus.SUCCEEDED)
    usage = owner_api.get("/api/v1/me/").json()["usage"]
    assert usage["active_jobs"] == 1
    assert usage["generations_last_hour"] == 2


def test_gpu_seconds_per_day_caps_new_work_once_spent(owner, owner_api, owner_client):
    """GPU time is summed (a batch's shared), not counted; 0 is no cap; spent, pages and API refuse alike."""
    make_generation(owner, status=JobStatus.SUCCEEDED, gpu_seconds=40.4)
    make_generation(owner, status=JobStatus.SUCCEEDED, gpu_seconds=900, created_at=timezone.now() - timedelta(days=2))
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    TrainingRun.objects.create(subject=subject, status=JobStatus.FAILED, gpu_seconds=20)
    create_generation(owner=owner, prompt="no cap by default")
    UserLimits.objects.create(user=owner, gpu_seconds_per_day=60)
    assert owner_api.get("/api/v1/me/").json()["usage"]["gpu_seconds_last_day"] == 60  # 40.4 + 20: the old one is out
    assert owner_api.get("/api/v1/me/").json()["limits"]["gpu_seconds_per_day"] == 60
    with pytest.raises(quotas.QuotaExceeded, match="You used 60 GPU-seconds of your 60 per day"):
        create_generation(owner=owner, prompt="over")
    assert "60 GPU-seconds of 60" in owner_client.get("/accounts/api/").content.decode()
    UserLimits.objects.filter(user=owner).update(gpu_seconds_per_day=61)
    create_generation(owner=owner, prompt="one second left")
