"""The serving engine on the demo model, in one run: batching throughput and fairness (issue 17).

    .venv/bin/python bench/batching.py [--jobs 8] [--rounds 3] [--threads 1] [--heavy 40]

Sets itself up: a throwaway SQLite file and media folder under build/bench-batching/, migrated here.
Every job is the real worker task (`generation.tasks.run_generation`) run in this process on one warm
renderer: the fair claim, the batch claim, heartbeats, progress writes, PNG encoding, files, the end
state. Measured:

1. Throughput: `--jobs` compatible queued jobs (one image each, the model's defaults, other prompts
   and seeds) drained with IMAGESITE_MAX_BATCH = 1 (one job per call), 2, 4 and 8; time ÷ the one-by-one
   time, rounds alternating so a busy machine slows them alike, plus the largest pixel difference
   of any image from its one-by-one twin (goal ≤ 0.5 at 8; identity within one level).
2. Fairness: a heavy user queues `--heavy` jobs, then a light user queues one; the light job's wait
   (queued → started) under the fair order, against what FIFO would have made it wait (the heavy
   jobs' run time ahead of it), with the default batch size. Goal: ≤ one batch's time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_table  # noqa: E402
from bench.worker_overhead import in_process_site  # noqa: E402  (a throwaway DB and media folder)

WORK = ROOT / "build" / "bench-batching"
BATCHES = (1, 2, 4, 8)
THROUGHPUT_GOAL = 0.5


def _queue(owner, job: dict, count: int, seed: int, prompt: str | None = None) -> list:
    from generation.models import Generation

    return [Generation.objects.create(owner=owner, seed=seed + i, model_name="bench", **{**job, "prompt": prompt or f"{job['prompt']} {i}"})
            for i in range(count)]


def _drain(batch: int) -> int:
    """Run the worker task until nothing is queued; returns the pipeline calls it made."""
    from django.conf import settings

    from generation.tasks import run_generation

    settings.IMAGESITE_MAX_BATCH = batch
    calls = 0
    while (outcome := run_generation(0)) != "nothing queued":
        calls += 1
        if "failed" in outcome:
            sys.exit(f"a job failed: {outcome}")
    return calls


def _pixels(rows) -> list[np.ndarray]:
    out = []
    for row in rows:
        row.refresh_from_db()
        with row.images.get().file.open("rb") as f:
            from PIL import Image

            out.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.int16))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heavy", type=int, default=40)
    args = parser.parse_args()

    owner, job, _renderer = in_process_site(args.threads, WORK, IMAGESITE_PREVIEW_S="0")
    job["prompt"] = "a red circle on a blue background"
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from generation.modelinfo import describe_model
    from generation.models import Generation

    info = describe_model(settings.IMAGESITE_MODEL)
    _queue(owner, job, 2, 1)
    _drain(2)  # warm-up
    print(f"model {info.name}: {job['width']}x{job['height']}, {job['steps']} steps, {job['scheduler']}; {args.threads} torch thread(s); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    times: dict[int, list[float]] = {b: [] for b in BATCHES}
    worst: dict[int, int] = {b: 0 for b in BATCHES}
    for round_ in range(args.rounds):
        reference = None
        for batch in BATCHES:
            rows = _queue(owner, job, args.jobs, 100)
            started = time.perf_counter()
            calls = _drain(batch)
            times[batch].append(time.perf_counter() - started)
            pixels = _pixels(rows)
            if batch == 1:
                reference = pixels
            else:
                worst[batch] = max(worst[batch], max(int(np.abs(a - b).max()) for a, b in zip(pixels, reference)))
            print(f"  round {round_ + 1} batch {batch}: {times[batch][-1]:.2f} s in {calls} call(s)", flush=True)

    one = statistics.median(times[1])
    print(f"\n{args.jobs} compatible jobs, {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for batch in BATCHES:
        ratio = statistics.median(times[batch]) / one
        goal = f"≤ {THROUGHPUT_GOAL} {'ok' if ratio <= THROUGHPUT_GOAL else 'MISSED'}" if batch == 8 else ""
        rows.append((str(batch), f"{statistics.median(times[batch]):.2f} s", f"{ratio:.2f}", str(worst[batch]) if batch > 1 else "–", goal))
    print_table(("IMAGESITE_MAX_BATCH", "median time", "÷ one by one", "max pixel difference", "goal"), rows)

    # Fairness: the light user's wait behind a heavy backlog, arriving once the backlog has started.
    from generation.tasks import run_generation

    settings.IMAGESITE_MAX_BATCH = 4
    light_user = get_user_model().objects.create_user("light")
    _queue(owner, job, args.heavy, 500)
    started = time.perf_counter()
    run_generation(0)  # the first call of the backlog
    call_s = time.perf_counter() - started
    light = _queue(light_user, job, 1, 900, prompt="a yellow star on a green background")[0]
    waiting = Generation.objects.filter(owner=owner, status="queued").count()
    _drain(4)
    light.refresh_from_db()
    waited = (light.started_at - light.created_at).total_seconds()
    fifo = waiting / 4 * call_s  # the heavy jobs still queued when it came, four to a call
    print(f"\nfairness: {args.heavy} heavy jobs queued, one light job arriving after the first call (IMAGESITE_MAX_BATCH 4)")
    print_table(("light job's wait", "FIFO would be", "one batch's time", "goal"),
                [(f"{waited:.2f} s", f"{fifo:.2f} s ({waiting} jobs ahead)", f"{call_s:.2f} s",
                  f"≤ one batch {'ok' if waited <= call_s * 1.2 else 'MISSED'}")])
    _mixed_load(owner, job, call_s)


def _mixed_load(heavy_user, job: dict, call_s: float) -> None:
    """Five users: one queues 20 jobs at once, four queue a job each every ~call time, four times;
    the worker drains as they come. Prints the longest wait of each user's jobs."""
    from django.contrib.auth import get_user_model

    from generation.models import Generation
    from generation.tasks import run_generation

    users = [heavy_user] + [get_user_model().objects.create_user(f"user{i}") for i in range(4)]
    arrivals = [(0.0, heavy_user, 20)] + [(call_s * (0.5 + k) + 0.1 * i, user, 1) for k in range(4) for i, user in enumerate(users[1:])]
    arrivals.sort(key=lambda a: a[0])
    made: list = []
    start = time.perf_counter()
    while arrivals or Generation.objects.filter(status="queued").exists():
        now = time.perf_counter() - start
        while arrivals and arrivals[0][0] <= now:
            _, user, count = arrivals.pop(0)
            made += _queue(user, job, count, 2000 + len(made))
        if run_generation(0) == "nothing queued" and arrivals:
            time.sleep(max(0.0, arrivals[0][0] - (time.perf_counter() - start)))
    waits: dict[str, float] = {}
    for row in Generation.objects.filter(pk__in=[m.pk for m in made]).select_related("owner"):
        waits[row.owner.username] = max(waits.get(row.owner.username, 0.0), (row.started_at - row.created_at).total_seconds())
    print(f"\nmixed load: 5 users (one queues 20 at once, four queue one every ~{call_s:.1f} s, four times), IMAGESITE_MAX_BATCH 4")
    print_table(("user", "longest wait"), [*((name, f"{wait:.2f} s") for name, wait in waits.items()),
                                            ("one batch's time", f"{call_s:.2f} s")])


if __name__ == "__main__":
    main()
