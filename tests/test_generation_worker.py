"""End to end on a real qcluster subprocess (ORM broker, the file test database, the demo model)."""
from __future__ import annotations

import io
import time

import pytest
from django.db import transaction
from django_q.models import OrmQ
from PIL import Image

from generation.models import GeneratedImage, Generation
from generation.services import create_generation
from imagesite.jobs import JobStatus, reap_stale_jobs

from .conftest import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

FAST = dict(negative_prompt="", steps=6, guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m", num_images=2)
# Long enough to catch it mid-run on 2 CPU cores (several seconds), short enough to finish on a retry.
SLOW = dict(negative_prompt="", steps=60, guidance_scale=7.5, width=64, height=64, scheduler="euler_a", num_images=2)


def files_under(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_queued_job_runs_to_png_with_parameters(owner, worker, media_dir):
    generation = create_generation(owner=owner, prompt="a red circle on a blue background", seed=5, **FAST)
    wait_for_status(generation, JobStatus.SUCCEEDED)
    assert generation.attempts == 1 and generation.progress_step == generation.progress_total > 0
    assert generation.started_at and generation.finished_at and not generation.error
    images = list(generation.images.order_by("index"))
    assert [i.seed for i in images] == [5, 6]
    for image in images:
        with image.file.open("rb") as f:
            png = Image.open(io.BytesIO(f.read()))
        assert png.size == (64, 64)
        params = png.text["parameters"]
        assert params.startswith("a red circle on a blue background\nSteps: 6, Sampler: DPM++ 2M, CFG scale: 7.5, ")
        assert f"Seed: {image.seed}, Size: 64x64, Model: " in params
        assert image.thumbnail.storage.exists(image.thumbnail.name)


def test_canceled_while_queued_never_runs(owner, worker, media_dir):
    before = files_under(media_dir)
    with transaction.atomic():
        generation = create_generation(owner=owner, prompt="never drawn", seed=1, **FAST)
        generation.cancel()
    # the worker gets the task, finds the row canceled and leaves it alone
    wait_for(lambda: not OrmQ.objects.exists(), 30, message="the broker to hand out the task")
    time.sleep(0.5)
    generation.refresh_from_db()
    assert generation.status == JobStatus.CANCELED and generation.attempts == 0
    assert not generation.images.exists() and files_under(media_dir) == before


def test_cancel_while_running_stops_at_the_next_step(owner, worker, media_dir):
    before = files_under(media_dir)
    generation = create_generation(owner=owner, prompt="a blue square on a white background", seed=3, **SLOW)
    wait_for(lambda: Generation.objects.get(pk=generation.pk).progress_step >= 2, 90, message="progress")
    assert generation.cancel()
    canceled_at_step = Generation.objects.get(pk=generation.pk).progress_step
    wait_for(lambda: "canceled" in _task_results(), 30, message="the task to return")
    generation.refresh_from_db()
    assert generation.status == JobStatus.CANCELED
    assert generation.progress_step <= canceled_at_step + 2 < generation.progress_total
    assert not generation.images.exists() and files_under(media_dir) == before


def _task_results() -> list[str]:
    from django_q.models import Task

    return [str(t.result) for t in Task.objects.all()]


def test_a_failing_pipeline_ends_failed_with_a_readable_message(owner, spawn_worker, tmp_path, media_dir):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    spawn_worker(IMAGESITE_MODEL=str(broken))
    before = files_under(media_dir)
    generation = create_generation(owner=owner, prompt="a red circle", seed=1, **FAST)
    wait_for_status(generation, JobStatus.FAILED)
    # The folder is read before any weights: the message names it and says what is wrong.
    assert "not-a-model" in generation.error and "model_index.json" in generation.error
    assert "Traceback" not in generation.error and len(generation.error) < 400
    assert files_under(media_dir) == before


def test_worker_killed_mid_job_is_requeued_then_finishes(owner, spawn_worker, media_dir):
    first = spawn_worker()
    generation = create_generation(owner=owner, prompt="a green heart on a black background", seed=8, **SLOW)
    wait_for(lambda: Generation.objects.get(pk=generation.pk).progress_step >= 1, 120, message="progress")
    first.kill()  # SIGKILL the whole cluster mid-job
    generation.refresh_from_db()
    assert generation.status == JobStatus.RUNNING  # nobody is left to say otherwise...
    time.sleep(1.2)
    # ...until the reaper (a django-q2 schedule every minute; called directly here) sees no heartbeat.
    assert reap_stale_jobs(stale_after_s=1) == {"requeued": 1, "failed": 0}
    generation.refresh_from_db()
    assert generation.status == JobStatus.QUEUED and generation.attempts == 1
    spawn_worker()
    wait_for_status(generation, JobStatus.SUCCEEDED, timeout=240)
    assert generation.attempts == 2 and generation.images.count() == 2


def test_worker_killed_on_the_last_attempt_fails_the_job(owner, spawn_worker):
    first = spawn_worker()
    generation = create_generation(owner=owner, prompt="a black star on a yellow background", seed=9, **SLOW)
    wait_for(lambda: Generation.objects.get(pk=generation.pk).progress_step >= 1, 120, message="progress")
    first.kill()
    Generation.objects.filter(pk=generation.pk).update(attempts=2)  # as if this was already the retry
    time.sleep(1.2)
    assert reap_stale_jobs(stale_after_s=1) == {"requeued": 0, "failed": 1}
    generation.refresh_from_db()
    assert generation.status == JobStatus.FAILED and "worker stopped" in generation.error


def test_one_worker_switches_base_models_between_jobs(owner, worker, settings, tmp_path, tiny_model):
    """Jobs on three base models (a tiny random SDXL and SD 2.x-v from the models folder: mechanics
    only; the demo, the default) through one warm worker: each renders with its own model's pipeline
    and says so."""
    import shutil

    from generation import catalog

    for family in ("sdxl", "sd2v"):
        shutil.copytree(tiny_model(family), tmp_path / f"tiny-{family}")
    settings.IMAGESITE_MODELS_DIR = str(tmp_path)
    sdxl, sd2v = catalog.find_offered("tiny-sdxl"), catalog.find_offered("tiny-sd2v")
    assert (sdxl.family, sd2v.family) == ("sdxl", "sd2v")
    default = catalog.default_model()
    jobs = [
        (create_generation(owner=owner, prompt="a red circle on a blue background", seed=5, base_model=base, **FAST), base)
        for base in (sdxl, sd2v, None)
    ]
    for generation, base in jobs:
        base = base or default
        wait_for_status(generation, JobStatus.SUCCEEDED, timeout=180)
        assert generation.base_model == base and generation.model_name == base.name and generation.phase == "rendering"
        name = base.name if base != default else default.info().name
        with generation.images.first().file.open("rb") as f:
            png = Image.open(io.BytesIO(f.read()))
        assert png.size == (64, 64) and f"Model: {name}" in png.text["parameters"]


def test_broker_redelivery_of_a_finished_job_does_not_run_it_again(owner, worker):
    """django-q2 #327: the ORM broker hands a task out again once its lock expires. The message only
    wakes a worker, which claims what is queued: nothing, so the finished job is not run again."""
    generation = create_generation(owner=owner, prompt="a red circle on a blue background", seed=2, **FAST)
    wait_for_status(generation, JobStatus.SUCCEEDED)
    finished_at = generation.finished_at
    # Re-queue the same task message, as the broker does after a crash before the ack.
    from django_q.tasks import async_task

    async_task("generation.tasks.run_generation", generation.pk, task_name="redelivered")
    wait_for(lambda: any("nothing queued" in r for r in _task_results()), 30, message="the redelivered task")
    generation.refresh_from_db()
    assert generation.attempts == 1 and generation.finished_at == finished_at
    assert GeneratedImage.objects.filter(generation=generation).count() == 2
