"""What live previews cost: a generation job's time with previews ÷ without, on the demo model, in one run.

    .venv/bin/python bench/preview_cost.py [--runs 15] [--warmup 2] [--threads 1] [--steps N] [--images N]

Sets itself up: a throwaway SQLite file and media folder under build/bench-previews/, migrated here.
Each job is the real task (`generation.tasks.run_generation`) run in this process on one warm
renderer: claim, heartbeat, progress writes, previews (x0 estimate, decode, JPEG, the row written
while the job runs and deleted at its end), PNG encoding, files, the end state. Three modes
alternate run by run, so a busy machine slows them alike:

- off: IMAGESITE_PREVIEW_S = 0 (no previews);
- default: IMAGESITE_PREVIEW_S = 0.5 (what a worker does: at most two a second);
- every step: a preview after every step but the last (the worst case, e.g. a fast GPU with a long
  interval setting would never get near it).

Goal (issue 16): default / off median ≤ 1.05. Jobs render the demo model's defaults unless told.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_table  # noqa: E402
from bench.worker_overhead import in_process_site  # noqa: E402  (a throwaway DB and media folder)

WORK = ROOT / "build" / "bench-previews"
RATIO_GOAL = 1.05
MODES = {"off": 0.0, "default": 0.5, "every step": 1e-9}


def _run_job(owner, job: dict, seed: int, interval_s: float, stored: list[int]) -> tuple[float, int]:
    """(seconds the task took, previews written) for one job with previews every `interval_s` (0: off)."""
    from django.conf import settings

    from generation.models import Generation
    from generation.tasks import run_generation

    settings.IMAGESITE_PREVIEW_S = interval_s
    row = Generation.objects.create(owner=owner, seed=seed, model_name="bench", **job)  # queued; no broker message
    before = len(stored)
    started = time.perf_counter()
    outcome = run_generation(row.pk)
    elapsed = time.perf_counter() - started
    if outcome != "succeeded":
        row.refresh_from_db()
        sys.exit(f"generation {row.pk} {outcome}: {row.error}")
    return elapsed, len(stored) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured jobs per mode")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured jobs per mode first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the worker's IMAGESITE_CPU_THREADS)")
    parser.add_argument("--steps", type=int, default=None, help="steps per job (default: the model's)")
    parser.add_argument("--images", type=int, default=1, help="images per job")
    args = parser.parse_args()

    owner, job, _renderer = in_process_site(args.threads, WORK, images=args.images, steps=args.steps)
    from django.conf import settings

    from generation.models import GenerationPreview
    from generation.modelinfo import describe_model

    info = describe_model(settings.IMAGESITE_MODEL)

    stored: list[int] = []  # one entry per preview written
    store = GenerationPreview.store.__func__

    def counting_store(cls, generation_id: int, image: bytes, step: int) -> bool:
        stored.append(len(image))
        return store(cls, generation_id, image, step)

    GenerationPreview.store = classmethod(counting_store)
    print(f"model {info.name}: {job['width']}x{job['height']}, {job['steps']} steps, {job['scheduler']}, {job['num_images']} image(s); "
          f"{args.threads} torch thread(s); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    counts: dict[str, list[int]] = {mode: [] for mode in MODES}
    for i in range(args.warmup + args.runs):
        measured = i >= args.warmup
        line = []
        for mode, interval_s in MODES.items():
            elapsed, count = _run_job(owner, job, 1000 + i, interval_s, stored)
            if measured:
                times[mode].append(elapsed)
                counts[mode].append(count)
            line.append(f"{mode} {elapsed:6.3f} s ({count:>2} previews)")
        print(f"  {'run' if measured else 'warm-up'} {i + 1:>2}: " + "   ".join(line), flush=True)

    off = statistics.median(times["off"])
    rows = []
    for mode in MODES:
        median = statistics.median(times[mode])
        ratio = median / off
        goal = f"≤ {RATIO_GOAL:.2f} {'ok' if ratio <= RATIO_GOAL else 'MISSED'}" if mode == "default" else ""
        rows.append((f"job with previews: {mode}", f"{median:.3f} s", f"{statistics.mean(counts[mode]):.1f}", f"{ratio:.3f}", goal))
    if stored:
        rows.append(("preview JPEG size, median", f"{statistics.median(stored)} B", "", "", ""))
    print(f"\n{args.runs} runs per mode after {args.warmup} warm-up; load average {os.getloadavg()[0]:.2f}")
    print_table(("measure", "median time", "previews/job", "÷ off", "goal"), rows)


if __name__ == "__main__":
    main()
