"""One GPU, two clusters (generation.gpu_lease): the generation and training workers take turns on a
device, tested on the CPU with the lease switched on ("on": no GPU here, the lease is what is tested).

flock locks belong to each open file, so two leases in one process contend as two processes would;
one test uses a real child process to show a killed holder frees the device. The last tests check the
GPU-seconds a job is charged start when it holds the lease, not while it waits for it."""
from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from generation.gpu_lease import DeviceLease, WarmTurns, lease_enabled
from imagesite.jobs import JobStatus

from .factories import make_generation
from .torch_support import offline_hub, one_torch_thread  # noqa: F401 (autouse)


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_lease_is_on_for_gpus_and_when_asked():
    assert lease_enabled("cuda:0", "auto") and not lease_enabled("cpu", "auto")
    assert lease_enabled("cpu", "on") and not lease_enabled("cuda:0", "off")


def test_a_waiting_worker_is_told_who_holds_the_device_and_gets_it_after(tmp_path):
    trainer = DeviceLease("cuda:0", "training", tmp_path)
    generator = DeviceLease("cuda:0", "generation", tmp_path)
    other_gpu = DeviceLease("cuda:1", "generation", tmp_path)
    trainer.acquire()
    assert other_gpu.try_acquire()  # two GPUs: each cluster has its own, no waiting
    told: list[str] = []
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (generator.acquire(on_wait=told.append), got.set()))
    waiter.start()
    _wait(lambda: told == ["training"])
    assert trainer.others_waiting() and not got.is_set()
    trainer.release()
    waiter.join(timeout=10)
    assert got.is_set() and generator.is_held and not trainer.try_acquire()
    generator.release()
    assert not trainer.others_waiting()


def test_the_warm_generation_worker_gives_the_gpu_up_between_jobs_and_reloads_after(tmp_path):
    dropped: list[float] = []
    turns = WarmTurns(DeviceLease("cuda:0", "generation", tmp_path), drop_model=lambda: dropped.append(time.monotonic()), poll_s=0.02)
    trainer = DeviceLease("cuda:0", "training", tmp_path)
    try:
        with turns.job():
            pass  # a job ran: the pipeline is warm and the lease stays held while idle
        assert not trainer.try_acquire() and not dropped
        trainer.acquire()  # the training run asks: the idle worker drops its model and lets go
        assert len(dropped) == 1
        told: list[str] = []
        started = threading.Event()

        def next_job() -> None:
            with turns.job(on_wait=told.append):
                started.set()

        job = threading.Thread(target=next_job)
        job.start()
        _wait(lambda: told == ["training"])  # the page can say why the job waits
        assert not started.is_set()
        trainer.release()
        job.join(timeout=10)
        assert started.is_set()
    finally:
        turns.close()


def test_a_running_job_finishes_before_training_takes_the_gpu(tmp_path):
    dropped: list[str] = []
    turns = WarmTurns(DeviceLease("cuda:0", "generation", tmp_path), drop_model=lambda: dropped.append("model"), poll_s=0.02)
    trainer = DeviceLease("cuda:0", "training", tmp_path)
    order: list[str] = []
    in_job = threading.Event()
    finish = threading.Event()

    def job() -> None:
        with turns.job():
            in_job.set()
            finish.wait(10)
            order.append("job ended")

    worker = threading.Thread(target=job)
    worker.start()
    in_job.wait(10)
    training = threading.Thread(target=lambda: (trainer.acquire(), order.append("training started")))
    training.start()
    time.sleep(0.3)
    assert order == [] and not dropped  # never taken from under a running job
    finish.set()
    worker.join(timeout=10)
    training.join(timeout=10)
    assert order == ["job ended", "training started"] and dropped == ["model"]
    trainer.release()
    turns.close()


def _hold_forever(folder: str, ready) -> None:
    DeviceLease("cuda:0", "training", folder).acquire()
    ready.set()
    time.sleep(600)


def test_a_killed_holder_frees_the_device(tmp_path):
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_forever, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(10)
        generator = DeviceLease("cuda:0", "generation", tmp_path)
        assert not generator.try_acquire() and generator.holder_role() == "training"
        holder.kill()
        holder.join(10)
        _wait(generator.try_acquire)
    finally:
        if holder.is_alive():
            holder.kill()


# --- GPU-seconds count from the moment the job holds the GPU ---------------------------------------
WAIT_S = 2.0


def _hold_until_waited_on(lease: DeviceLease, row, seconds: float, while_waiting=None) -> threading.Thread:
    """Hold `lease` (another cluster's) until `row` says it waits for the GPU, then `seconds` more
    (calling `while_waiting()` first, from the holder's thread)."""
    from generation.gpu_lease import WAITING_FOR_GPU

    lease.acquire()

    def hold() -> None:
        try:
            _wait(lambda: type(row).objects.filter(pk=row.pk, phase=WAITING_FOR_GPU).exists(), 60)
            if while_waiting is not None:
                while_waiting()
            time.sleep(seconds)
        finally:
            lease.release()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_generation_is_not_charged_for_its_wait_for_the_gpu(owner, settings, monkeypatch, tmp_path):
    """Through the real task in this process, the shipped demo model on the CPU, the lease switched on
    (no GPU here: the lease and the clock are what is tested): a training run holds the device, the
    job waits WAIT_S, its page saying why, then renders; its GPU-seconds are the render's, well below
    the wait."""
    from django.test import Client
    from django.urls import reverse

    from generation import tasks
    from generation.models import Generation

    settings.IMAGESITE_GPU_LOCK_DIR, settings.IMAGESITE_PREVIEW_S, settings.IMAGESITE_CPU_THREADS = str(tmp_path), 0, 1
    monkeypatch.setenv("IMAGESITE_GPU_LEASE", "on")
    monkeypatch.setattr(tasks, "_turns", None)  # this test's own warm turns, closed below
    job = make_generation(owner)
    client, pages = Client(), []
    client.force_login(owner)
    trainer = _hold_until_waited_on(DeviceLease("cpu", "training", tmp_path), job, WAIT_S,
                                    lambda: pages.append(client.get(reverse("generation-detail", args=[job.pk])).content.decode()))
    started = time.monotonic()
    try:
        assert tasks.run_generation(job.pk) == "succeeded"
    finally:
        trainer.join(60)
        if tasks._turns is not None:
            tasks._turns.close()
    took = time.monotonic() - started
    job = Generation.objects.get(pk=job.pk)
    assert took >= WAIT_S and job.status == JobStatus.SUCCEEDED
    assert len(pages) == 1 and "waiting for the GPU: a training run is using it" in pages[0]
    assert 0 < job.gpu_seconds < WAIT_S / 2, (job.gpu_seconds, took)


@pytest.mark.django_db(transaction=True)  # the holder's thread reads the row
def test_a_training_run_is_not_charged_for_its_wait_for_the_gpu(owner, settings, monkeypatch, tmp_path):
    """The training side of the lease (training.tasks._device_turn) on the CPU, lease on: a generation
    worker holds the device WAIT_S after the run says it waits; the run's clock starts when it has it."""
    from imagesite.runner import counting_gpu_seconds
    from training.models import Subject, TrainingRun
    from training.tasks import _device_turn

    settings.IMAGESITE_GPU_LOCK_DIR = str(tmp_path)
    monkeypatch.setenv("IMAGESITE_GPU_LEASE", "on")
    subject = Subject.objects.create(owner=owner, name="S", token="sks", class_noun="shape")
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING)
    generator = _hold_until_waited_on(DeviceLease("cpu", "generation", tmp_path), run, WAIT_S)
    started = time.monotonic()
    with counting_gpu_seconds([run]):
        with _device_turn(run):
            time.sleep(0.2)  # the run's work on the device
    generator.join(60)
    took = time.monotonic() - started
    run.refresh_from_db()
    assert took >= WAIT_S and 0.15 <= run.gpu_seconds < WAIT_S / 2, (run.gpu_seconds, took)
