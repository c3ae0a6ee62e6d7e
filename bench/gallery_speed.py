"""The gallery page and the API lists at 10,000 images for one user against the same pages at 100, in
one run, on SQLite and on PostgreSQL (issue 18, "A gallery that stays fast").

    .venv/bin/python bench/gallery_speed.py [--rounds 20] [--small 100] [--big 10000] [--backends sqlite postgres]

Each backend runs in a child process of its own (Django's settings are read once per process): a
throwaway database (SQLite under build/bench-gallery/, PostgreSQL as a throwaway cluster started
by tests/services.py's `postgres_cluster`, as tests/test_search_postgres.py does; skipped with a
message when Debian's postgresql is not installed), migrated, with two users: one with --small
images and one with --big (4 images a generation, so the generations list has a quarter as many
rows). PostgreSQL is ANALYZEd after the insert, as autovacuum would soon do; SQLite is left
without statistics, as Django leaves it.

Pages are reached as a user reaches them, by following links: the gallery's "Older" link, the
API's `next`, from the first page to the last (untimed); "last" is the last full page (a last
page of 4 rows against one of 16 would compare page contents, not page costs), "middle" the page
halfway to it. Then each round requests every page of both users once, alternating which user goes first,
through Django's test client in this one thread (middleware, view, queries and template included,
no network). The table shows the median per page, its ratio big/small (the goal: at most 1.5) and
the queries each page made. One thread, one process at a time: the box is shared.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "build" / "bench-gallery"
GOAL = 1.5
OLDER_LINK = re.compile(r'<a href="\?([^"]*)"[^>]*>Older')
LISTS = {"gallery": "/gallery/", "api images": "/api/v1/images/", "api generations": "/api/v1/generations/"}


# --- the child: one backend -----------------------------------------------------------------------
def _fill(owner, images: int) -> None:
    from django.db import connection

    from generation.models import GeneratedImage, Generation

    per_job = 4
    jobs = Generation.objects.bulk_create(
        Generation(owner=owner, prompt=f"a red circle number {n} on a blue background", seed=n, steps=4, guidance_scale=7.5,
                   width=64, height=64, scheduler="dpmpp_2m", num_images=per_job, model_name="bench", status="succeeded")
        for n in range(images // per_job)
    )
    if connection.features.can_return_rows_from_bulk_insert is False:  # pragma: no cover - both backends return ids
        jobs = list(Generation.objects.filter(owner=owner).order_by("pk"))
    rows = [GeneratedImage(generation=job, index=i, seed=job.seed + i, width=64, height=64,
                           file=f"images/{owner.pk}/{job.pk}-{i}.png", thumbnail=f"thumbs/{owner.pk}/{job.pk}-{i}.png")
            for job in jobs for i in range(per_job)]
    GeneratedImage.objects.bulk_create(rows, batch_size=500)


def _chain(client, kind: str) -> list[tuple[str, int]]:
    """Every page of one list, first to last, by following its links: (URL, rows on it)."""
    url, pages = LISTS[kind], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
        if kind == "gallery":
            text = response.content.decode()
            pages.append((url, text.count('<a class="tile"')))
            found = OLDER_LINK.search(text)
            url = f"{LISTS[kind]}?{html.unescape(found.group(1))}" if found else None
        else:
            pages.append((url, len(response.json()["results"])))
            url = response.json()["next"]
    return pages


def _picked(chain: list[tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """First, middle and last page; "last" is the last full one, so that both sizes compare pages of
    as many rows (100 images make a last gallery page of 4, 10,000 one of 16)."""
    full = max(rows for _, rows in chain)
    last = max(i for i, (_, rows) in enumerate(chain) if rows == full)
    return {"first": chain[0], "middle": chain[last // 2], "last": chain[last]}


def _child(backend: str, rounds: int, sizes: tuple[int, int]) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesite.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    clients, pages, queries, counts = {}, {}, {}, {}
    for size in sizes:
        owner = get_user_model().objects.create_user(f"user{size}", password="x")
        _fill(owner, size)
        clients[size] = Client()
        clients[size].force_login(owner)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    for size in sizes:
        for kind in LISTS:
            for where, (url, rows) in _picked(_chain(clients[size], kind)).items():
                pages[(kind, where, size)], counts[(kind, where, size)] = url, rows
                with CaptureQueriesContext(connection) as captured:
                    clients[size].get(url)
                queries[(kind, where, size)] = len(captured)
    times: dict[tuple, list[float]] = {key: [] for key in pages}
    for round_ in range(rounds + 1):  # round 0 warms up and is not counted
        order = sizes if round_ % 2 else sizes[::-1]
        for kind in LISTS:
            for where in ("first", "middle", "last"):
                for size in order:
                    started = time.perf_counter()
                    response = clients[size].get(pages[(kind, where, size)])
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200
                    if round_:
                        times[(kind, where, size)].append(elapsed)
    small, big = sizes
    rows = []
    for kind in LISTS:
        for where in ("first", "middle", "last"):
            a, b = (statistics.median(times[(kind, where, s)]) for s in sizes)
            rows.append({"page": f"{kind} {where}", "small_ms": a * 1000, "big_ms": b * 1000, "ratio": b / a,
                         "queries": f"{queries[(kind, where, small)]}/{queries[(kind, where, big)]}",
                         "rows": f"{counts[(kind, where, small)]}/{counts[(kind, where, big)]}"})
    return {"backend": backend, "rows": rows}


# --- the parent: one child per backend, then the table --------------------------------------------
def _run_child(backend: str, database_url: str, args) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "imagesite.settings",
           "IMAGESITE_MEDIA_ROOT": str(WORK / "media"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, "--child", backend, "--rounds", str(args.rounds),
                             "--small", str(args.small), "--big", str(args.big)],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{backend} bench failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _print(result: dict, args) -> None:
    print(f"\n{result['backend']}: median of {args.rounds} rounds; ratio = {args.big} images / {args.small} images (goal ≤ {GOAL})")
    print(f"{'page':<24}{args.small:>10} img{args.big:>10} img{'ratio':>8}  {'queries':<9}rows")
    for row in result["rows"]:
        mark = "" if row["ratio"] <= GOAL else "  over"
        print(f"{row['page']:<24}{row['small_ms']:>11.1f} ms{row['big_ms']:>10.1f} ms{row['ratio']:>7.2f}x  {row['queries']:<9}{row['rows']}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.rounds, (args.small, args.big))))
        return
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for backend in args.backends:
        if backend == "sqlite":
            _print(_run_child("sqlite", f"sqlite:///{WORK / 'bench.sqlite3'}", args), args)
            continue
        from tests.services import PG_BIN, postgres_cluster

        if not PG_BIN:
            print("\npostgres: skipped: needs Debian's postgresql (/usr/lib/postgresql/*/bin), as tests/test_search_postgres.py does")
            continue
        with postgres_cluster() as cluster:
            _print(_run_child("postgres", cluster.url(), args), args)
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
