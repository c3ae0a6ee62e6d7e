"""The reaper covers training runs like generations: requeued on their own cluster, or failed."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from imagesite.jobs import JobStatus, reap_stale_jobs
from training.models import Subject, TrainingRun

from .factories import make_generation

pytestmark = pytest.mark.django_db


def test_stale_training_run_is_requeued_on_the_training_cluster(owner, django_capture_on_commit_callbacks):
    subject = Subject.objects.create(owner=owner, name="S", token="sks", class_noun="shape")
    stale = timezone.now() - timedelta(minutes=10)
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, attempts=1, heartbeat_at=stale)
    with django_capture_on_commit_callbacks(execute=True):
        assert reap_stale_jobs() == {"requeued": 1, "failed": 0}
    run.refresh_from_db()
    assert run.status == JobStatus.QUEUED and OrmQ.objects.get().key == "training"


def test_live_jobs_are_left_alone(owner):
    generation = make_generation(owner, status=JobStatus.RUNNING, attempts=1, heartbeat_at=timezone.now())
    assert reap_stale_jobs() == {"requeued": 0, "failed": 0}
    generation.refresh_from_db()
    assert generation.status == JobStatus.RUNNING


def test_stale_job_out_of_attempts_fails_readably(owner):
    generation = make_generation(owner, status=JobStatus.RUNNING, attempts=2, heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert reap_stale_jobs() == {"requeued": 0, "failed": 1}
    generation.refresh_from_db()
    assert generation.status == JobStatus.FAILED and "worker stopped" in generation.error


def test_eta_and_percent(owner):
    # a slow model load before step 1 does not count towards the pace
    generation = make_generation(owner, status=JobStatus.RUNNING, progress_step=5, progress_total=20,
                                 started_at=timezone.now() - timedelta(seconds=300),
                                 first_step_at=timezone.now() - timedelta(seconds=8))
    assert generation.progress_percent == 25
    assert 25 <= generation.eta_seconds <= 35  # 2 s a step, 15 steps to go


@pytest.mark.parametrize("kind", ["training run", "generation"])
def test_a_failed_jobs_message_never_shows_a_server_path(owner, owner_client, settings, kind):
    """Job.fail cuts every server path to its file's name (imagesite.jobs.without_paths): the stored
    error, the job's page and the API (read here with the page's session) show "lora.safetensors",
    never where the server keeps it."""
    media = str(settings.MEDIA_ROOT).rstrip("/")
    oserror = OSError(2, "No such file or directory")
    oserror.filename = f"{media}/subjects/1/runs/2/lora.safetensors"
    reasons = [
        f"Training failed: {oserror}",  # [Errno 2] No such file or directory: '<media>/…/lora.safetensors'
        "could not load /srv/imagesite/models/base/unet/diffusion_pytorch_model.safetensors (truncated)",
    ]
    if kind == "training run":
        subject = Subject.objects.create(owner=owner, name="S", token="sks", class_noun="shape")
        job = TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, attempts=1)
        page, api = f"/training/{job.pk}/", f"/api/v1/training-runs/{job.pk}/"
    else:
        job = make_generation(owner, status=JobStatus.RUNNING, attempts=1)
        page, api = f"/generations/{job.pk}/", f"/api/v1/generations/{job.pk}/"
    assert job.fail(" ".join(reasons))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "lora.safetensors" in job.error and "diffusion_pytorch_model.safetensors" in job.error
    shown = [job.error, owner_client.get(page).content.decode(), owner_client.get(api).content.decode()]
    assert "lora.safetensors" in shown[1] and "lora.safetensors" in shown[2]
    for text in shown:
        assert media not in text and "/srv/" not in text and "/subjects/1/runs/" not in text
