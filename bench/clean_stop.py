"""Seconds from SIGTERM until a cluster's main process exits, and what became of the job it ran.

    .venv/bin/python bench/clean_stop.py [--tries 3] [--commands qcluster workers]

Sets itself up: a throwaway SQLite file and media folder under build/bench-stop/, migrated here. For
each command (`manage.py qcluster`, django-q2's own; `manage.py workers`, ours) and each target (the
main process; its whole process group, as systemd, `docker stop` and honcho send) it starts a cluster,
waits until it is idle, or mid-way through a generation (the demo model, 60 steps, 64 px, 2 images),
sends SIGTERM and times the exit. A cluster still there after --grace seconds is SIGKILLed and counted
as hung. Mid-job it also reports the job's state after the stop and its attempts.

Goal (issue 17): out within a few seconds, never hung; a job interrupted is back in the queue with
its attempt not counted (or finished).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_table  # noqa: E402
from bench.worker_overhead import _environment, _fresh_database  # noqa: E402  (a throwaway DB and media folder)

WORK = ROOT / "build" / "bench-stop"
JOB = dict(negative_prompt="", steps=60, guidance_scale=7.5, width=64, height=64, scheduler="euler_a", num_images=2)


def _setup() -> None:
    os.environ.update(_environment(None, WORK))
    import django

    django.setup()
    _fresh_database(WORK)


def _start(command: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "manage.py", command], cwd=ROOT, env=os.environ.copy(),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "running" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{command} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def _sigterm(proc: subprocess.Popen, group: bool, grace: float) -> float | None:
    """Seconds until the main process exits; None when it was still there after `grace` (then the
    whole group is SIGKILLed)."""
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        took = time.monotonic() - started
    except subprocess.TimeoutExpired:
        took = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a hung or half-stopped cluster
    except ProcessLookupError:
        pass
    proc.wait()
    return took


def _clear_queue() -> None:
    from django_q.models import OrmQ

    from generation.models import Generation

    Generation.objects.filter(status__in=["queued", "running"]).update(status="canceled")
    OrmQ.objects.all().delete()


def _one(command: str, group: bool, mid_job: bool, grace: float, n: int) -> tuple[float | None, str]:
    from django.contrib.auth import get_user_model

    from generation.models import Generation
    from generation.services import create_generation

    _clear_queue()
    proc = _start(command, WORK / f"{command}-{n}.log")
    job = None
    if mid_job:
        owner, _ = get_user_model().objects.get_or_create(username="bench")
        job = create_generation(owner=owner, prompt="a red circle", seed=n, **JOB)
        deadline = time.monotonic() + 120
        while not Generation.objects.filter(pk=job.pk, status="running", progress_step__gte=2).exists():
            if time.monotonic() > deadline:
                sys.exit("the job did not start")
            time.sleep(0.05)
    else:
        time.sleep(1)
    took = _sigterm(proc, group, grace)
    if job is None:
        return took, ""
    job.refresh_from_db()
    return took, f"{job.status}, attempts {job.attempts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--grace", type=float, default=30, help="seconds before a cluster counts as hung")
    parser.add_argument("--commands", nargs="+", default=["qcluster", "workers"])
    args = parser.parse_args()
    _setup()
    rows = []
    for command in args.commands:
        for mid_job in (False, True):
            for group in (False, True):
                results = [_one(command, group, mid_job, args.grace, n) for n in range(args.tries)]
                times = [took for took, _ in results]
                done = [f"{took:.1f}" if took is not None else "hung" for took in times]
                jobs = sorted({state for _, state in results if state})
                rows.append((command, "mid-job" if mid_job else "idle", "group" if group else "main",
                             " ".join(done), "; ".join(jobs)))
    print(f"{args.tries} tries each; 'hung': still running {args.grace:g} s after SIGTERM (then SIGKILLed)")
    print_table(("command", "state", "SIGTERM to", "seconds to exit", "job after"), rows)


if __name__ == "__main__":
    main()
