"""Clean stops (issue 17): SIGTERM to `manage.py workers`, to its main process or to its whole process
group (what systemd, `docker stop` and honcho send), ends the cluster within seconds; the job it was
running stops at its next step and goes back to the queue, its attempt not counted, and runs again
after a restart. The demo model renders (real weights, tiny sizes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generation.models import Generation
from generation.services import create_generation
from imagesite import stopping
from imagesite.jobs import JobStatus
from imagesite.runner import run_job

from .conftest import ROOT, wait_for, wait_for_status
from .services import stop_process

# Long enough to catch mid-run on 2 CPU cores, short enough to finish after the restart.
SLOW = dict(negative_prompt="", steps=40, guidance_scale=7.5, width=64, height=64, scheduler="euler_a", num_images=1)


class Cluster:
    """`manage.py workers` in its own process group (as tests/conftest.py's Worker starts qcluster)."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "manage.py", "workers"], cwd=ROOT, env=env,
                                     stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "running" in self.output() or self.proc.poll() is not None, 60, message="the cluster to start")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sigterm(self, *, group: bool) -> float:
        """Seconds from SIGTERM until the main process exits (it is SIGKILLed after 30 s)."""
        start = time.monotonic()
        if group:
            os.killpg(self.proc.pid, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return time.monotonic() - start

    def group_is_gone(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def kill(self) -> None:
        if not self.group_is_gone():
            os.killpg(self.proc.pid, signal.SIGKILL)
        stop_process(self.proc)


@pytest.fixture
def start_cluster(worker_env, no_worker, tmp_path):
    started: list[Cluster] = []

    def start() -> Cluster:
        started.append(Cluster(worker_env, tmp_path / f"workers-{len(started)}.log"))
        return started[-1]

    yield start
    for cluster in started:
        cluster.kill()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_sigterm_to_the_group_mid_job_requeues_it_and_a_restart_runs_it(owner, start_cluster):
    """Then SIGTERM to the restarted cluster's main process alone, idle: out within seconds too."""
    cluster = start_cluster()
    generation = create_generation(owner=owner, prompt="a red circle", seed=3, **SLOW)
    wait_for(lambda: Generation.objects.filter(pk=generation.pk, status=JobStatus.RUNNING, progress_step__gte=2).exists(),
             90, interval=0.05, message="the job to be mid-run")

    took = cluster.sigterm(group=True)

    assert took < 10, cluster.output()
    wait_for(cluster.group_is_gone, 5, message="every process of the cluster to exit")
    generation.refresh_from_db()
    assert generation.status == JobStatus.QUEUED, cluster.output()  # 60 steps do not finish in the stop
    assert generation.attempts == 0 and generation.started_at is None and generation.progress_step == 0
    assert not generation.images.exists()

    restarted = start_cluster()  # the job's fresh message is waiting for it
    wait_for_status(generation, JobStatus.SUCCEEDED, timeout=120)
    assert generation.attempts == 1 and generation.images.count() == 1

    took = restarted.sigterm(group=False)
    assert took < 5 and restarted.proc.returncode == 0, restarted.output()
    wait_for(restarted.group_is_gone, 5, message="every process of the cluster to exit")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_sigterm_to_the_group_while_idle_exits_within_seconds(start_cluster):
    cluster = start_cluster()
    took = cluster.sigterm(group=True)
    assert took < 5 and cluster.proc.returncode == 0, cluster.output()
    wait_for(cluster.group_is_gone, 5, message="every process of the cluster to exit")


@pytest.fixture
def stop_requested(monkeypatch):
    """This process's worker stop flag raised, as SIGTERM raises it in a worker; lowered after."""
    monkeypatch.setattr(stopping, "_stopping", type(stopping._stopping)())
    stopping.request_stop()


@pytest.mark.django_db
def test_a_job_that_meets_a_stopping_worker_goes_back_to_the_queue_uncounted(owner, stop_requested, django_capture_on_commit_callbacks):
    from django_q.models import OrmQ

    generation = create_generation(owner=owner, prompt="a red circle", seed=3, **SLOW)

    def render(job):  # what the generation's work does at each step
        raise AssertionError("a stopping worker starts no job")

    messages = OrmQ.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        outcome = run_job(generation, render, label="Generation")

    generation.refresh_from_db()
    assert outcome.startswith("back in the queue")
    assert generation.status == JobStatus.QUEUED and generation.attempts == 0
    assert OrmQ.objects.count() == messages + 1  # a fresh message wakes the next worker


@pytest.mark.django_db
def test_the_progress_reporter_stops_a_running_job_at_its_next_step(owner, monkeypatch, django_capture_on_commit_callbacks):
    from imagesite.jobs import ProgressReporter

    monkeypatch.setattr(stopping, "_stopping", type(stopping._stopping)())
    generation = create_generation(owner=owner, prompt="a red circle", seed=3, **SLOW)
    steps = []

    def render(job):
        report = ProgressReporter(job)
        for step in range(1, 61):
            if step == 3:
                stopping.request_stop()  # SIGTERM arrives during step 3
            report(step, 60)
            steps.append(step)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = run_job(generation, render, label="Generation")

    generation.refresh_from_db()
    assert steps == [1, 2] and outcome.startswith("back in the queue")
    assert generation.status == JobStatus.QUEUED and generation.attempts == 0 and generation.progress_step == 0
