"""A job through the REST API against the same job through the worker directly and the bare pipeline
call, in one run.

    .venv/bin/python bench/api_overhead.py [--runs 10] [--warmup 2] [--poll 0.05]

Sets itself up like bench/worker_overhead.py (a throwaway SQLite and media folder under build/bench/,
a real qcluster) and also starts the web server as `make run` does (`manage.py runserver --noreload`
on a free port). All three sides render the demo model's defaults and are warmed up first; runs
alternate so that a busy machine slows them alike.

- bare: `Renderer.render(settings)` in this process.
- worker: `create_generation()` until the row says succeeded (no HTTP).
- api: what a script sees: `POST /api/v1/generations/` with a token (202), then `GET` its `url` every
  `--poll` seconds until `status` is succeeded, then `GET` the image file; wall time on the client.
  Also the server's answer times for the POST and for one poll (p50).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.worker_overhead as worker_bench  # noqa: E402
from bench.worker_overhead import Worker, _environment, _fresh_database, _job_settings, _p95, _run_bare, _run_worker  # noqa: E402
from tests.services import free_port, stop_process  # noqa: E402

# A folder of its own: worker_overhead.py wipes build/bench/ when it starts, and both may run at once.
WORK = worker_bench.WORK = ROOT / "build" / "bench-api"


class WebServer:
    """`manage.py runserver --noreload` on a free port, on the bench database."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(WORK / "web.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=ROOT, env=os.environ.copy(), stdout=self.log, stderr=subprocess.STDOUT,
        )
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(self.base + "/api/v1/schema/", timeout=1)
                return
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"runserver did not start:\n{(WORK / 'web.log').read_text(errors='replace')}")
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def _run_api(session, base: str, job: dict, seed: int, poll_s: float, timeout_s: float = 600) -> tuple[float, float, list[float]]:
    """Client wall time from POST to the downloaded image, the POST's answer time, and each poll's."""
    started = time.perf_counter()
    response = session.post(base + "/api/v1/generations/", json={**job, "seed": seed})
    post_s = time.perf_counter() - started
    if response.status_code != 202:
        sys.exit(f"POST answered {response.status_code}: {response.text[:300]}")
    url, polls = response.json()["url"], []
    while True:
        t0 = time.perf_counter()
        body = session.get(url).json()
        polls.append(time.perf_counter() - t0)
        if body["status"] == "succeeded":
            break
        if body["status"] in ("failed", "canceled") or time.perf_counter() - started > timeout_s:
            sys.exit(f"generation {body['id']} ended {body['status']}: {body['error']}")
        time.sleep(poll_s)
    image = session.get(body["images"][0]["file_url"])
    if image.status_code != 200 or not image.content.startswith(b"\x89PNG"):
        sys.exit(f"image download answered {image.status_code}")
    return time.perf_counter() - started, post_s, polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between the client's polls")
    args = parser.parse_args()

    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.update(_environment(None))
    import django

    django.setup()
    import logging

    import requests
    from diffusers.utils import logging as diffusers_logging
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from api.models import ApiToken
    from imagesite.models import UserLimits
    from generation.modelinfo import describe_model
    from generation.pipeline import Renderer

    logging.getLogger("django-q").setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()
    _fresh_database()
    owner = get_user_model().objects.create_user("bench")
    UserLimits.objects.create(user=owner, generations_per_hour=100_000)  # the bench is not a user to limit
    _, key = ApiToken.create_for(owner, "bench")
    info = describe_model(settings.IMAGESITE_MODEL)
    job = _job_settings(info)
    print(f"model {info.name}: {job['width']}x{job['height']}, {job['steps']} steps, {job['scheduler']}, 1 image; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    # the thread count the worker renders with (IMAGESITE_CPU_THREADS, or --threads): a fair bare baseline
    renderer = Renderer(settings.IMAGESITE_MODEL, settings.IMAGESITE_VRAM, settings.IMAGESITE_MODEL_CONFIG, settings.IMAGESITE_CPU_THREADS)
    worker, web = Worker(), WebServer()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    bare, direct, api, posts, polls = [], [], [], [], []
    try:
        for i in range(args.warmup + args.runs):
            seed = 2000 + i
            b = _run_bare(renderer, job, seed)
            w = _run_worker(owner, job, seed)[0]
            a, p, ps = _run_api(session, web.base, job, seed, args.poll)
            measured = i >= args.warmup
            if measured:
                bare.append(b), direct.append(w), api.append(a), posts.append(p), polls.extend(ps)
            print(f"  {'run' if measured else 'warm-up'} {i + 1:>2}: bare {b:6.3f} s   worker {w:6.3f} s   api {a:6.3f} s (POST {p * 1000:5.1f} ms, {len(ps)} polls)", flush=True)
    finally:
        web.stop()
        worker.stop()

    b, w, a = statistics.median(bare), statistics.median(direct), statistics.median(api)
    rows = [
        ("bare Renderer.render, median", f"{b:.3f} s"),
        ("worker job, created → succeeded, median", f"{w:.3f} s"),
        ("API job, POST → polled succeeded → PNG downloaded, median", f"{a:.3f} s"),
        ("ratio API / bare", f"{a / b:.3f}"),
        ("ratio API / worker", f"{a / w:.3f}"),
        ("POST /generations/ answer, p50 / p95", f"{statistics.median(posts) * 1000:.1f} / {_p95(posts) * 1000:.1f} ms"),
        ("GET /generations/{id}/ poll answer, p50 / p95", f"{statistics.median(polls) * 1000:.1f} / {_p95(polls) * 1000:.1f} ms"),
    ]
    print(f"\n{args.runs} runs after {args.warmup} warm-up, polling every {args.poll} s; load average {os.getloadavg()[0]:.2f}")
    widths = [max(len(r[i]) for r in rows + [("measure", "value")]) for i in range(2)]
    for name, value in [("measure", "value"), tuple("-" * x for x in widths), *rows]:
        print(f"| {name.ljust(widths[0])} | {value.rjust(widths[1])} |")


if __name__ == "__main__":
    main()
