"""SIGKILL of the whole worker cluster with jobs queued, running and pulled from the broker, then a
restart: every job ends succeeded exactly once (none lost, none run twice, no duplicate images or
files) and the lot finishes within about a minute after the restart plus its render time.

Two set-ups: the embedded one (SQLite, django-q2's ORM broker: the messages the killed cluster had
pulled stay locked for `retry`, 35 minutes) and the scale-out one (PostgreSQL + Redis, Redis killed
too: with no persistence every message is gone). Either way the job row is the queue
(imagesite.queue): the messages left over wake workers, the reaper requeues the job that was
running, and its wake-ups cover the jobs left without a message. One of the jobs never had a
message at all (a web server killed between its commit and the enqueue).

The sweep (imagesite.queue.keep_queues_moving) runs here every couple of seconds with small
thresholds, where the cluster's schedule runs it every minute with WAKE_AFTER_S = 30 s and
IMAGESITE_STALE_AFTER_S = 90 s: the mechanics are the same, the test just doesn't wait minutes.
The demo model renders; no web server runs (jobs are made by the service pages and API call).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .services import PG_BIN, free_port, postgres_cluster, wait_port

ROOT = Path(__file__).resolve().parent.parent
JOBS = 10
IMAGES = 2
# Worker and sweep timing for the test: a heartbeat a second, dead after 4 s without one, and
# wake-ups for jobs queued over 3 s with nobody on them.
HEARTBEAT_S, STALE_AFTER_S, WAKE_AFTER_S, SWEEP_EVERY_S = 1, 4, 3, 2
# One job per pipeline call: every job needs a message of its own, so those the killed cluster held
# are missed unless the wake-ups make up for them.
WORKER_ENV = {"IMAGESITE_HEARTBEAT_S": str(HEARTBEAT_S), "IMAGESITE_MAX_BATCH": "1", "IMAGESITE_CPU_THREADS": "1"}

# Run in the test process (SQLite) or in `manage.py shell -c` on the scale-out site: the same code.
PROBE = textwrap.dedent(f"""
    import json
    from unittest import mock

    from django.contrib.auth import get_user_model
    from django.core.files.storage import default_storage
    from django.db.models import Count
    from django_q.brokers import get_broker

    from generation.models import GeneratedImage, Generation
    from generation.services import create_generation
    from imagesite.models import UserLimits
    from imagesite.queue import keep_queues_moving

    JOB = dict(negative_prompt="", steps=30, guidance_scale=7.5, width=64, height=64, scheduler="euler_a", num_images={IMAGES})

    def create_jobs(n):
        users = [get_user_model().objects.create_user(name, password="pw-long-enough-1") for name in ("kira", "lev")]
        for user in users:
            UserLimits.objects.update_or_create(user=user, defaults={{"max_queued_jobs": 50, "generations_per_hour": 500}})
        ids = [create_generation(owner=users[i % 2], prompt=f"a red circle on a blue background {{i}}", seed=i, **JOB).pk
               for i in range(n - 1)]
        with mock.patch("django_q.tasks.async_task"):  # the web server died between its commit and the message
            ids.append(create_generation(owner=users[1], prompt="a white heart", seed=99, **JOB).pk)
        return ids

    def states(ids):
        rows = (Generation.objects.filter(pk__in=ids).annotate(n_images=Count("images"))
                .values("pk", "status", "attempts", "progress_step", "n_images", "started_at", "finished_at", "error"))
        stamp = lambda t: t.timestamp() if t else None
        return [{{**row, "started_at": stamp(row["started_at"]), "finished_at": stamp(row["finished_at"])}} for row in rows]

    def messages():
        return get_broker().queue_size()  # deliverable now (ORM: not locked by a cluster)

    def files(ids):
        images = GeneratedImage.objects.filter(generation_id__in=ids)
        rows = [name for pair in images.values_list("file", "thumbnail") for name in pair]
        owners = set(Generation.objects.filter(pk__in=ids).values_list("owner_id", flat=True))
        disk = [f"{{top}}/{{owner}}/{{name}}" for top in ("images", "thumbs") for owner in owners
                for name in (default_storage.listdir(f"{{top}}/{{owner}}")[1] if default_storage.exists(f"{{top}}/{{owner}}") else [])]
        return {{"rows": rows, "disk": disk, "pairs": list(images.values_list("generation_id", "index"))}}

    def kill_when_mid_way(ids, pgid):
        # SIGKILL the cluster's process group once some jobs are done and one is rendering, at once
        # (the check and the kill in one process: no time for the job to end in between).
        import os, signal, time

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = states(ids)
            if (sum(row["status"] == "succeeded" for row in rows) >= 2
                    and any(row["status"] == "running" and row["progress_step"] >= 2 for row in rows)):
                os.killpg(pgid, signal.SIGKILL)
                return True
            time.sleep(0.1)
        return False

    def sweep():
        return keep_queues_moving(stale_after_s={STALE_AFTER_S}, wake_after_s={WAKE_AFTER_S})
""")


class InProcess:
    """The probe run in the test process (the SQLite test database the clusters share)."""

    def __init__(self):
        self.ns: dict = {}
        exec(PROBE, self.ns)

    def call(self, expression: str):
        return json.loads(json.dumps(eval(expression, self.ns)))


class Shell:
    """The probe run by `manage.py shell -c` on the scale-out site."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def call(self, expression: str):
        code = PROBE + f"\nprint('@@' + json.dumps({expression}))\n"
        out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env,
                             check=True, capture_output=True, text=True).stdout
        return json.loads([line for line in out.splitlines() if line.startswith("@@")][-1][2:])


def kill_mid_way_and_restart(site, start_cluster, kill_stack, restart_stack) -> None:
    """The scenario and its checks, the same on both set-ups. `start_cluster()` returns a Worker;
    `kill_stack(worker)` SIGKILLs it (and what else dies with it); `restart_stack()` brings the rest
    back before the cluster restarts."""
    ids = site.call(f"create_jobs({JOBS})")
    first = start_cluster()
    # Mid-way: some done, one rendering, one or two pulled by the cluster's pusher, the rest queued.
    assert site.call(f"kill_when_mid_way({ids}, {first.proc.pid})"), first.output()[-3000:]
    kill_stack(first)
    killed_at = time.monotonic()
    at_kill = {row["pk"]: row for row in site.call(f"states({ids})")}
    done_before = [row for row in at_kill.values() if row["status"] == "succeeded"]
    running = [pk for pk, row in at_kill.items() if row["status"] == "running"]
    queued = [pk for pk, row in at_kill.items() if row["status"] == "queued"]
    # Usually one job was rendering (or just claimed); in the rare gap between two jobs none was.
    assert queued and done_before, at_kill
    render_s = min(row["finished_at"] - row["started_at"] for row in done_before)  # the first also loaded the model

    restart_stack()
    restarted_at = time.monotonic()
    messages_left = site.call("messages()")
    # Fewer deliverable messages than jobs to run: the killed cluster took some (or Redis lost them).
    assert messages_left < len(running) + len(queued), (messages_left, at_kill)
    second = start_cluster()
    sweeps = 0
    deadline = restarted_at + 60 + render_s * (len(running) + len(queued)) * 1.5
    while True:
        rows = site.call(f"states({ids})")
        if all(row["status"] not in ("queued", "running") for row in rows):
            break
        assert time.monotonic() < deadline, (rows, second.output()[-3000:])
        site.call("sweep()")  # the reaper's schedule, every minute on a cluster
        sweeps += 1
        time.sleep(SWEEP_EVERY_S)
    took = time.monotonic() - restarted_at
    print(f"\nkilled with {len(done_before)} done, {len(running)} running, {len(queued)} queued, {messages_left} "
          f"deliverable message(s); all done {took:.1f} s after the restart ({sweeps} sweeps, {render_s:.2f} s a job)")

    rows = {row["pk"]: row for row in rows}
    assert sorted(rows) == sorted(ids)  # none lost
    assert {pk: row["status"] for pk, row in rows.items()} == {pk: "succeeded" for pk in ids}, rows
    assert all(row["n_images"] == IMAGES for row in rows.values()), rows
    # Run once: a job done before the kill was not run again; the one rendering ran a second time
    # (the first attempt's work was lost with its worker); every other job once.
    assert {pk: rows[pk]["attempts"] for pk in ids} == {pk: 2 if pk in running else 1 for pk in ids}, rows
    assert all(rows[row["pk"]]["finished_at"] == row["finished_at"] for row in done_before)
    stored = site.call(f"files({ids})")
    assert len(stored["pairs"]) == len(set(map(tuple, stored["pairs"]))) == JOBS * IMAGES  # no duplicate rows
    assert sorted(stored["rows"]) == sorted(stored["disk"])  # no orphan or missing files
    assert len(set(stored["rows"])) == JOBS * IMAGES * 2  # image + thumbnail each
    assert time.monotonic() - killed_at < 600


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_sigkill_of_the_cluster_on_sqlite_loses_and_repeats_nothing(spawn_worker, settings, tmp_path):
    settings.IMAGESITE_HEARTBEAT_S = HEARTBEAT_S  # the sweep runs here: the workers' heartbeat
    # The GPU lease on the CPU too: the killed worker held it (a flock, dropped with the process).
    env = {**WORKER_ENV, "IMAGESITE_GPU_LEASE": "on", "IMAGESITE_GPU_LOCK_DIR": str(tmp_path / "gpu-locks")}
    kill_mid_way_and_restart(InProcess(), lambda: spawn_worker(**env), lambda worker: worker.kill(), lambda: None)
    assert list((tmp_path / "gpu-locks").rglob("*.lease"))  # the lease was in play


class Redis:
    """A Redis server without persistence: SIGKILLed and started again, it comes back empty."""

    def __init__(self):
        self.port = free_port()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.mark.worker
@pytest.mark.scale_out
@pytest.mark.skipif(not PG_BIN or not shutil.which("redis-server"), reason="needs Debian's postgresql and redis-server (.ci/run installs them)")
def test_sigkill_of_workers_and_redis_on_postgres_loses_and_repeats_nothing(tmp_path):
    from .conftest import Worker

    with postgres_cluster() as cluster:
        redis = Redis()
        env = {**os.environ, "DATABASE_URL": cluster.url(), "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
               "IMAGESITE_MEDIA_ROOT": str(tmp_path / "media"), "PYTHONUNBUFFERED": "1",
               "DJANGO_SETTINGS_MODULE": "imagesite.settings", **WORKER_ENV}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
        started: list[Worker] = []

        def start_cluster() -> Worker:
            started.append(Worker(env, tmp_path / f"cluster-{len(started)}.log"))
            return started[-1]

        def kill_stack(worker: Worker) -> None:
            worker.kill()
            redis.kill()  # every message with it

        try:
            kill_mid_way_and_restart(Shell(env), start_cluster, kill_stack, redis.start)
        finally:
            for worker in started:
                worker.stop()
            redis.kill()


@pytest.mark.django_db
def test_a_dead_workers_running_job_does_not_hold_back_the_wake_ups(django_user_model, settings):
    """Right after a SIGKILL of the whole stack, with the real thresholds: the job that was rendering
    still says "running" (its heartbeat is 40 s old, the reaper waits for 90 s), yet the first sweep
    after the restart (the schedule's, within a minute) wakes workers for the queued jobs short of a
    message, and only for those; a job whose worker still beats holds them back."""
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    from imagesite.jobs import JobStatus
    from imagesite.queue import keep_queues_moving

    from .factories import make_generation

    settings.IMAGESITE_HEARTBEAT_S, settings.IMAGESITE_STALE_AFTER_S = 10, 90
    # Messages the earlier tests' clusters left in this database file (committed by their processes, so
    # no rollback removes them) would count as deliverable and hold these wake-ups back: start empty.
    OrmQ.objects.all().delete()
    owner = django_user_model.objects.create_user("kira", password="pw-long-enough-1")
    now = timezone.now()
    running = make_generation(owner, status=JobStatus.RUNNING, attempts=1, started_at=now - timedelta(seconds=50),
                              heartbeat_at=now - timedelta(seconds=40))
    for _ in range(3):
        make_generation(owner, created_at=now - timedelta(minutes=2))
    before = OrmQ.objects.count()
    assert keep_queues_moving() == {"requeued": 0, "failed": 0, "woken": 3}
    assert OrmQ.objects.count() == before + 3
    # A minute on, the wake-ups still wait for a cluster (none is up): no more pile up behind them.
    assert keep_queues_moving() == {"requeued": 0, "failed": 0}
    assert OrmQ.objects.count() == before + 3
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING  # the reaper's turn comes at 90 s
    type(running).objects.filter(pk=running.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=5))
    assert keep_queues_moving() == {"requeued": 0, "failed": 0}
