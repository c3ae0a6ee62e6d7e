"""/metrics: the queue and its jobs in Prometheus' text format, closed to the public."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from imagesite.jobs import JobStatus

from .factories import make_generation

pytestmark = pytest.mark.django_db


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_are_closed_to_the_public_and_to_users(client, settings):
    settings.IMAGESITE_METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 403
    user = get_user_model().objects.create_user("alice", password="pw-long-enough")
    client.force_login(user)
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_metrics_count_the_queue_and_job_time(client):
    staff = get_user_model().objects.create_user("op", password="pw-long-enough", is_staff=True)
    now = timezone.now()
    make_generation(staff, created_at=now - timedelta(seconds=30))
    make_generation(staff)
    make_generation(staff, status=JobStatus.RUNNING, started_at=now, gpu_seconds=0.5)
    make_generation(staff, status=JobStatus.SUCCEEDED, started_at=now - timedelta(seconds=12), finished_at=now - timedelta(seconds=2),
                    gpu_seconds=8.25)
    make_generation(staff, status=JobStatus.SUCCEEDED, gpu_seconds=1.5)
    make_generation(staff, status=JobStatus.FAILED, started_at=now - timedelta(seconds=3), finished_at=now, gpu_seconds=2.0)
    client.force_login(staff)
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/plain")
    samples = _samples(answer.content.decode())
    kind = (("cluster", "default"), ("kind", "generation"))
    assert samples[("imagesite_jobs_queued", kind)] == 2
    assert samples[("imagesite_jobs_running", kind)] == 1
    assert samples[("imagesite_queue_oldest_wait_seconds", kind)] >= 30
    assert samples[("imagesite_jobs_finished_total", (("kind", "generation"), ("status", "succeeded")))] == 2
    assert samples[("imagesite_jobs_finished_total", (("kind", "generation"), ("status", "failed")))] == 1
    assert samples[("imagesite_job_run_seconds_total", (("kind", "generation"), ("status", "succeeded")))] == pytest.approx(10.0)
    assert samples[("imagesite_jobs_queued", (("cluster", "training"), ("kind", "trainingrun")))] == 0
    gpu = {status: samples[("imagesite_job_gpu_seconds_total", (*kind, ("status", status)))]
           for status in ("queued", "running", "succeeded", "failed", "canceled")}
    assert gpu == {"queued": 0.0, "running": 0.5, "succeeded": pytest.approx(9.75), "failed": 2.0, "canceled": 0.0}
    assert samples[("imagesite_job_gpu_seconds_total", (("cluster", "training"), ("kind", "trainingrun"), ("status", "succeeded")))] == 0
