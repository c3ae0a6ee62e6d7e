"""A warm job through the worker against the bare pipeline call with the same settings, in one run.

    .venv/bin/python bench/worker_overhead.py [--runs 15] [--warmup 2] [--threads N] [--idle-s 20]

Sets itself up: a throwaway SQLite file and media folder under build/bench/, migrated here, and a real
`manage.py workers` subprocess on them (qcluster that stops cleanly; the ORM broker, as in the embedded
set-up). Both sides render the demo model's defaults (64x64, 20 steps, DPM++ 2M, 1 image) and are
warmed up first; runs alternate bare / worker so that a busy machine slows both alike.

- bare: `Renderer(...).render(settings)` in this process, no progress callback.
- worker: the row's `created_at → finished_at`: from `create_generation()` (insert + enqueue on
  commit) until the worker marks it `succeeded`; so it includes pick-up, per-step progress writes,
  PNG encoding and file writes.
- pick-up: the row's `created_at → started_at` (django-q2's own task record says `started` at enqueue
  time, not at pick-up, so it cannot tell).
- bare in the worker: the same bare `render()` as a django-q2 task on the same warm renderer, timed
  inside the worker process. It splits the overhead: worker process (this vs bare) against our task
  code (claim, progress writes, cancel checks, PNGs, files: task vs this).

- idle CPU: after the runs, the cluster left alone for `--idle-s` seconds (20): the CPU time
  (utime + stime from /proc/<pid>/stat) of every process of its process group (the `workers` main
  process, sentinel, pusher, monitor, workers), as a percentage of one core.

Goals: worker/bare median ratio ≤ 1.10 (issue 2); pick-up p95 ≤ 0.05 s and idle CPU of a cluster
≤ 5% of one core (issue 17, now that every pick-up claims from the database in fair order).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import stop_process  # noqa: E402

WORK = ROOT / "build" / "bench"
RATIO_GOAL = 1.10
PICKUP_P95_GOAL_S = 0.05
IDLE_CPU_GOAL_PERCENT = 5.0
# This process waits on the worker with a slow poll: on a small machine a busy poller steals CPU from
# the render it is timing (torch spin-waits when a core is taken). The times come from the worker.
POLL_S = 0.5


def _environment(threads: int | None, work: Path = WORK) -> dict[str, str]:
    """The settings both this process and the worker run with: a throwaway DB and media folder."""
    env = {
        "DJANGO_SETTINGS_MODULE": "imagesite.settings",
        "IMAGESITE_SQLITE_PATH": str(work / "bench.sqlite3"),
        "IMAGESITE_MEDIA_ROOT": str(work / "media"),
        "PYTHONUNBUFFERED": "1",
    }
    if threads:
        env["OMP_NUM_THREADS"] = env["IMAGESITE_CPU_THREADS"] = str(threads)
    return env


def _fresh_database(work: Path = WORK) -> None:
    if work.exists():
        shutil.rmtree(work)
    (work / "media").mkdir(parents=True)
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


class Worker:
    """`manage.py workers` (qcluster that stops cleanly) in its own process group, logging to
    build/bench/qcluster.log."""

    def __init__(self) -> None:
        self.log_path = WORK / "qcluster.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "workers"],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while "running" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"qcluster did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds (user + system) used so far by each live process of the cluster's group."""
        tick = os.sysconf("SC_CLK_TCK")
        used: dict[int, float] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            except OSError:
                continue  # ended meanwhile
            if int(fields[2]) == self.proc.pid:  # field 5, the process group: ours is the session's leader
                used[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick  # fields 14, 15
        return used

    def idle_cpu(self, seconds: float) -> tuple[float, int]:
        """The cluster's CPU use while nothing is queued, as % of one core, and how many processes."""
        before, started = self.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        after, took = self.cpu_seconds(), time.monotonic() - started
        spent = sum(total - before.get(pid, 0.0) for pid, total in after.items())
        return 100 * spent / took, len(after)

    def stop(self) -> None:
        # The whole group, as systemd does: out within a few seconds (the stock qcluster hung here
        # until SIGKILLed at 30 s).
        stop_process(self.proc, grace=10, group=True)
        self.log.close()


def _job_settings(info) -> dict:
    return {
        "prompt": info.example_prompts[0] if info.example_prompts else "a red circle on a blue background",
        "negative_prompt": "",
        **info.defaults(),
    }


def _run_bare(renderer, job: dict, seed: int) -> float:
    from generation.pipeline import RenderSettings

    started = time.perf_counter()
    renderer.render(RenderSettings(seed=seed, **job))
    return time.perf_counter() - started


def _run_worker(owner, job: dict, seed: int, timeout_s: float = 600) -> tuple[float, float, float]:
    """Seconds from enqueue until the row says succeeded, the row's pick-up latency, and the task's
    own time on the row (started → finished: render, progress writes, PNG encoding, files)."""
    from generation.models import Generation
    from generation.services import create_generation
    from imagesite.jobs import JobStatus

    started = time.monotonic()
    generation = create_generation(owner=owner, seed=seed, **job)
    rows = Generation.objects.filter(pk=generation.pk)
    while (status := rows.values_list("status", flat=True).get()) in (JobStatus.QUEUED, JobStatus.RUNNING):
        if time.monotonic() - started > timeout_s:
            sys.exit(f"generation {generation.pk} still {status} after {timeout_s} s")
        time.sleep(POLL_S)
    generation.refresh_from_db()
    if status != JobStatus.SUCCEEDED:
        sys.exit(f"generation {generation.pk} ended {status}: {generation.error}")
    return (
        (generation.finished_at - generation.created_at).total_seconds(),
        (generation.started_at - generation.created_at).total_seconds(),
        (generation.finished_at - generation.started_at).total_seconds(),
    )


def render_in_worker(job: dict, seed: int) -> float:
    """Runs inside the qcluster worker: the bare render on the worker's warm renderer, in seconds."""
    from django.conf import settings

    from generation.pipeline import RenderSettings, get_renderer

    renderer = get_renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG)
    started = time.perf_counter()
    renderer.render(RenderSettings(seed=seed, **job))
    return time.perf_counter() - started


def _run_bare_in_worker(job: dict, seed: int, timeout_s: float = 600) -> float:
    from django_q.tasks import async_task, fetch

    task_id = async_task("bench.worker_overhead.render_in_worker", job, seed)
    started = time.monotonic()
    while (task := fetch(task_id)) is None:
        if time.monotonic() - started > timeout_s:
            sys.exit(f"bare render task {task_id} did not finish in {timeout_s} s")
        time.sleep(POLL_S)
    if not task.success:
        sys.exit(f"bare render task failed in the worker:\n{task.result}")
    return float(task.result)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured repetitions of each side")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured repetitions of each side first")
    parser.add_argument("--idle-s", type=float, default=20, help="seconds the idle cluster's CPU use is measured over")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads on both sides (default: IMAGESITE_CPU_THREADS, as the worker uses)")
    args = parser.parse_args()

    os.environ.pop("DATABASE_URL", None)  # throwaway SQLite and the ORM broker, whatever the shell says
    os.environ.pop("REDIS_URL", None)
    os.environ.update(_environment(args.threads))
    import django

    django.setup()
    logging.getLogger("django-q").setLevel(logging.WARNING)  # no "Enqueued" line per job
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from generation.modelinfo import describe_model
    from diffusers.utils import logging as diffusers_logging

    from generation.pipeline import Renderer

    diffusers_logging.disable_progress_bar()

    _fresh_database()
    owner = get_user_model().objects.create_user("bench")
    info = describe_model(settings.IMAGESITE_MODEL)
    job = _job_settings(info)
    print(f"model {info.name}: {job['width']}x{job['height']}, {job['steps']} steps, {job['scheduler']}, 1 image; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    # the same thread count the worker's renderer uses (IMAGESITE_CPU_THREADS, or --threads)
    renderer = Renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS)
    worker = Worker()
    try:
        bare: list[float] = []
        through_worker: list[float] = []
        pickups: list[float] = []
        in_task: list[float] = []
        bare_in_worker: list[float] = []
        for i in range(args.warmup + args.runs):
            seed = 1000 + i
            b = _run_bare(renderer, job, seed)
            bw = _run_bare_in_worker(job, seed)
            w, p, t = _run_worker(owner, job, seed)
            measured = i >= args.warmup
            if measured:
                bare.append(b)
                through_worker.append(w)
                pickups.append(p)
                in_task.append(t)
                bare_in_worker.append(bw)
            print(f"  {'run' if measured else 'warm-up'} {i + 1:>2}: bare {b:6.3f} s   bare in worker {bw:6.3f} s   worker {w:6.3f} s (pick-up {p:5.3f} s, task {t:6.3f} s)", flush=True)
        time.sleep(2)  # the last job's heartbeat and progress threads wind down
        print(f"  idle: {args.idle_s:.0f} s with nothing queued …", flush=True)
        idle_percent, processes = worker.idle_cpu(args.idle_s)
    finally:
        worker.stop()

    bare_median = statistics.median(bare)
    worker_median = statistics.median(through_worker)
    ratio = worker_median / bare_median
    pickup_p50, pickup_p95 = statistics.median(pickups), _p95(pickups)
    rows = [
        ("bare Renderer.render, median", f"{bare_median:.3f} s", ""),
        ("worker job, created → succeeded, median", f"{worker_median:.3f} s", ""),
        ("  of which the task, started → finished, median", f"{statistics.median(in_task):.3f} s", ""),
        ("  bare render inside the worker process, median", f"{statistics.median(bare_in_worker):.3f} s", ""),
        ("ratio worker / bare", f"{ratio:.3f}", _verdict(ratio <= RATIO_GOAL, f"≤ {RATIO_GOAL:.2f}")),
        ("pick-up created → started, p50", f"{pickup_p50:.3f} s", ""),
        ("pick-up created → started, p95", f"{pickup_p95:.3f} s", _verdict(pickup_p95 <= PICKUP_P95_GOAL_S, f"≤ {PICKUP_P95_GOAL_S} s")),
        (f"idle CPU of the cluster ({processes} processes, {args.idle_s:.0f} s)", f"{idle_percent:.1f}% of a core",
         _verdict(idle_percent <= IDLE_CPU_GOAL_PERCENT, f"≤ {IDLE_CPU_GOAL_PERCENT:.0f}%")),
    ]
    print(f"\n{args.runs} runs after {args.warmup} warm-up; load average {os.getloadavg()[0]:.2f}")
    widths = [max(len(r[i]) for r in rows + [("measure", "value", "goal")]) for i in range(3)]
    for name, value, goal in [("measure", "value", "goal"), tuple("-" * w for w in widths), *rows]:
        print(f"| {name.ljust(widths[0])} | {value.rjust(widths[1])} | {goal.ljust(widths[2])} |")


def _verdict(ok: bool, goal: str) -> str:
    return f"{goal} {'ok' if ok else 'MISSED'}"


if __name__ == "__main__":
    main()


def in_process_site(threads: int | None, work: Path, images: int = 1, steps: int | None = None, **env: str):
    """For benches that run the real worker task in their own process: a throwaway, migrated SQLite
    site under `work`, Django set up, a user, and the demo model's default job. Returns (owner, job,
    renderer): the renderer warm, with the worker's thread count."""
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.update(_environment(threads, work))
    os.environ.update(env)
    import django

    django.setup()
    logging.getLogger("django-q").setLevel(logging.WARNING)
    from diffusers.utils import logging as diffusers_logging
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from generation import pipeline
    from generation.modelinfo import describe_model

    diffusers_logging.disable_progress_bar()
    _fresh_database(work)
    owner = get_user_model().objects.create_user("bench")
    info = describe_model(settings.IMAGESITE_MODEL)
    job = {"prompt": info.example_prompts[0] if info.example_prompts else "a red circle on a blue background",
           "negative_prompt": "", **info.defaults(), "num_images": images}
    if steps:
        job["steps"] = steps
    renderer = pipeline.get_renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS)
    return owner, job, renderer
