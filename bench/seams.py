"""The seams of issue 14, measured against a live web server: quotas under concurrency, a heavy photo
upload, login throttling.

    .venv/bin/python bench/seams.py                      # the code this script sits in ("after")
    .venv/bin/python bench/seams.py --repo /work/base    # another checkout ("before")
    .venv/bin/python bench/seams.py --postgres           # on a throwaway PostgreSQL instead of SQLite

Each run makes a fresh database (SQLite file or a PostgreSQL cluster on loopback) and media folder
in a temp folder, migrates it, makes its users with `manage.py shell`, then starts
`manage.py runserver --noreload` (threaded, DEBUG=1) from `--repo`. No worker runs: admitted jobs stay
queued, which is what the caps count, and any photo processing left to a worker stays undone.

(a) Creates admitted past each cap, CLIENTS requests released together by a barrier:
    max_queued_jobs=10 and generations_per_hour=5 (POST /api/v1/generations/); 3 uploads of 15 small
    PNGs to one subject (cap 30 photos; rows not "rejected" count); subject creates without a token
    (the server suggests one) and how many of them were 5xx. Races do not lose every time: --rounds
    (default 3) repeats it all with fresh users, and the table gives each round's figure (a/b/c; "5xx"
    counts requests with no answer too) and the worst.
(b) 30 single-colour 6320x6320 PNGs (40 MP, ~166 KB each, made once with Pillow into bench/out/) in one
    multipart request: the request's wall time, and the web process's RSS (psutil, sampled every 50 ms
    in a thread) before and at its peak.
(c) Wrong passwords on /accounts/login/: how many are answered as the normal form (200 with the
    "correct username and password" error) before something else (a lock-out) answers; stops at 50.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psutil
import requests

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.services import PG_BIN, SHELL_MODEL_LOOKUP, free_port, postgres_cluster, stop_process, wait_port  # noqa: E402

OUT = HERE / "bench" / "out"
PASSWORD = "a-long-enough-password-42"
BIG_SIDE = 6320  # 6320² = 39.9 MP, just under the 40 MP photo limit
BIG_COUNT = 30
PHOTO_CAP = 30


# --- the server and its database --------------------------------------------------------------------
@contextmanager
def _database(folder: Path, postgres: bool) -> Iterator[str | None]:
    """The DATABASE_URL of a throwaway PostgreSQL cluster in `folder`, or None for the SQLite file."""
    if not postgres:
        yield None
        return
    if not PG_BIN:
        raise SystemExit("--postgres needs Debian's postgresql (/usr/lib/postgresql/*/bin)")
    with postgres_cluster(folder) as cluster:
        yield cluster.url()


class Site:
    """A checkout (`repo`) with its own database and media folder, run by its own python."""

    def __init__(self, repo: Path, folder: Path, database_url: str | None):
        self.repo = repo
        venv_python = repo / ".venv" / "bin" / "python"
        self.python = str(venv_python) if venv_python.exists() else sys.executable
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesite.settings", "DJANGO_DEBUG": "1", "PYTHONUNBUFFERED": "1",
                    "IMAGESITE_SQLITE_PATH": str(folder / "db.sqlite3"), "IMAGESITE_MEDIA_ROOT": str(folder / "media")}
        self.env.pop("REDIS_URL", None)  # the ORM broker: enqueueing only writes a row
        self.env.pop("DATABASE_URL", None)
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.log_path = folder / "runserver.log"
        self.proc: subprocess.Popen | None = None
        self.base = ""

    def manage(self, *args: str) -> str:
        done = subprocess.run([self.python, "manage.py", *args], cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def shell(self, code: str) -> dict:
        """Run `code` in `manage.py shell`; it prints one JSON line last."""
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])

    def start(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([self.python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=self.repo,
                                     env=self.env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(port, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log_path.read_text(errors='replace')[-3000:]}") from None

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def rss(self) -> int:
        """The web process's resident memory in bytes (with any children, though --noreload has none)."""
        proc = psutil.Process(self.proc.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total


SETUP = SHELL_MODEL_LOOKUP + textwrap.dedent("""
    import json
    from django.contrib.auth.models import User

    Limits = model("imagesite.UserLimits", "api.UserLimits")
    Token = model("api.ApiToken", "imagesite.ApiToken")
    keys = {}
    for name, limits in %(users)r.items():
        user = User.objects.create_user(name, password=%(password)r)
        if limits:
            Limits.objects.create(user=user, **limits)
        keys[name] = Token.create_for(user, "bench")[1]
    print(json.dumps(keys))
""")

COUNTS = textwrap.dedent("""
    import json
    from django.apps import apps

    Generation = apps.get_model("generation.Generation")
    Photo = apps.get_model("training.SubjectPhoto")
    photos = Photo.objects.all()
    if any(f.name == "status" for f in Photo._meta.get_fields()):
        photos = photos.exclude(status="rejected")
    print(json.dumps({
        "generations": {name: Generation.objects.filter(owner__username=name).count() for name in %(users)r},
        "photos": {str(pk): photos.filter(subject_id=pk).count() for pk in %(subjects)r},
    }))
""")

# What each user is for, with their limit overrides; the caps' users get a fresh set each round.
CAPS = (("queued", "max_queued_jobs", 10), ("hourly", "generations_per_hour", 5))
ROUND_USERS = {"queued": {"max_queued_jobs": 10, "generations_per_hour": 1000},
               "hourly": {"generations_per_hour": 5, "max_queued_jobs": 1000}, "photos": {}, "subjects": {}}
OTHER_USERS = {"big": {}, "login": {}}


def users_for(rounds: int) -> dict[str, dict]:
    return {**{f"{name}{r}": limits for r in range(rounds) for name, limits in ROUND_USERS.items()}, **OTHER_USERS}


# --- requests -----------------------------------------------------------------------------------------
def fire_together(calls: list[Callable[[], requests.Response]]) -> list[int]:
    """Status codes of `calls`, each run in its own thread, all released at once (0: no answer)."""
    barrier = threading.Barrier(len(calls))
    codes = [0] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            codes[index] = calls[index]().status_code
        except requests.RequestException as exc:
            print(f"  request {index}: {exc}", file=sys.stderr)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png(colour: tuple[int, int, int], side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def big_pngs() -> list[bytes]:
    """30 single-colour 40 MP PNGs, made once (a few seconds each) and kept in bench/out/."""
    folder = OUT / f"seams-{BIG_SIDE}px"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(BIG_COUNT):
        path = folder / f"{i:02d}.png"
        if not path.exists():
            data = png((40 + i * 6, 200 - i * 5, (i * 37) % 256), BIG_SIDE)
            path.with_suffix(".tmp").write_bytes(data)
            path.with_suffix(".tmp").rename(path)
        files.append(path.read_bytes())
    return files


def make_subject(site: Site, key: str, name: str) -> int:
    response = requests.post(site.base + "/api/v1/subjects/", json={"name": name, "class_noun": "dog", "token": "sks"}, headers=auth(key), timeout=120)
    if response.status_code != 201:
        raise RuntimeError(f"could not create a subject: {response.status_code} {response.text[:300]}")
    return response.json()["id"]


# --- the measures ------------------------------------------------------------------------------------
def measure_caps(site: Site, keys: dict[str, str], clients: int, subject_clients: int, rounds: int) -> list[tuple[str, str, str, str]]:
    """Each round: the two generation caps, the photo cap and the subject creates, by fresh users.
    Races do not lose every time, so the table gives every round's figure and the worst."""
    url = site.base + "/api/v1/generations/"
    subjects_url = site.base + "/api/v1/subjects/"
    answers: dict[str, list[list[int]]] = {"queued": [], "hourly": [], "photos": [], "subjects": []}
    subjects = []
    for r in range(rounds):
        for user, _, _ in CAPS:
            key = keys[f"{user}{r}"]
            answers[user].append(fire_together([lambda i=i, key=key: requests.post(url, json={"prompt": f"a red circle {i}"}, headers=auth(key), timeout=300)
                                                for i in range(clients)]))
        key = keys[f"photos{r}"]
        subject = make_subject(site, key, "Capped")
        subjects.append(subject)
        photos_url = f"{site.base}/api/v1/subjects/{subject}/photos/"
        batches = [[("photos", (f"b{b}-{i}.png", png((b * 80, i * 16, 255 - i * 16), 64), "image/png")) for i in range(15)] for b in range(3)]
        answers["photos"].append(fire_together([lambda files=files, key=key: requests.post(photos_url, files=files, headers=auth(key), timeout=600)
                                                for files in batches]))
        key = keys[f"subjects{r}"]
        answers["subjects"].append(fire_together([lambda i=i, key=key: requests.post(subjects_url, json={"name": f"S{i}", "class_noun": "dog"}, headers=auth(key), timeout=300)
                                                  for i in range(subject_clients)]))
    counts = site.shell(COUNTS % {"users": [f"{user}{r}" for r in range(rounds) for user, _, _ in CAPS], "subjects": subjects})

    def fives(codes: list[list[int]]) -> str:
        return "/".join(str(sum(c >= 500 or c == 0 for c in round_codes)) for round_codes in codes)

    rows = []
    for user, limit, cap in CAPS:
        # The rows, not the answers, are the truth.
        stored = [counts["generations"][f"{user}{r}"] for r in range(rounds)]
        rows.append((f"{limit}={cap}: {clients} creates at once", f"{'/'.join(map(str, stored))} admitted, {fives(answers[user])} 5xx",
                     f"+{max(0, max(stored) - cap)}", "+0, no 5xx"))
    stored = [counts["photos"][str(pk)] for pk in subjects]
    rows.append((f"photo cap {PHOTO_CAP}: 3 x 15 uploads at once", f"{'/'.join(map(str, stored))} stored, {fives(answers['photos'])} 5xx",
                 f"+{max(0, max(stored) - PHOTO_CAP)}", "+0, no 5xx"))
    created = "/".join(str(codes.count(201)) for codes in answers["subjects"])
    rows.append((f"subject creates, {subject_clients} at once, no token", f"{created} created, {fives(answers['subjects'])} 5xx",
                 f"{max(sum(c >= 500 for c in codes) for codes in answers['subjects'])} 5xx", "0 5xx"))
    return rows


def measure_big_upload(site: Site, key: str) -> list[tuple[str, str, str, str]]:
    files = big_pngs()
    subject = make_subject(site, key, "Big")
    body = [("photos", (f"big{i:02d}.png", data, "image/png")) for i, data in enumerate(files)]
    before = site.rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], site.rss())
            except psutil.Error:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        response = requests.post(f"{site.base}/api/v1/subjects/{subject}/photos/", files=body, headers=auth(key), timeout=1800)
        answer = str(response.status_code)
    except requests.RequestException as exc:
        answer = f"no answer ({type(exc).__name__})"
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    mb = 2**20
    size = sum(map(len, files)) / mb
    return [
        (f"{BIG_COUNT} x 40 MP PNGs ({size:.1f} MB) in one request", f"{elapsed:.1f} s, answered {answer}", "", "<= 2 s"),
        ("  web RSS before -> peak", f"{before / mb:.0f} -> {peak[0] / mb:.0f} MB", f"+{(peak[0] - before) / mb:.0f} MB", "<= +100 MB"),
    ]


def measure_login(site: Site, limit: int = 50) -> list[tuple[str, str, str, str]]:
    session = requests.Session()
    url = site.base + "/accounts/login/"
    session.get(url, timeout=60)
    normal, ended = 0, f"no lock-out in {limit}"
    for attempt in range(limit):
        token = session.cookies.get("csrftoken", "")
        response = session.post(url, data={"username": "login", "password": f"wrong-{attempt}", "csrfmiddlewaretoken": token},
                                headers={"Referer": url}, timeout=60, allow_redirects=False)
        text = response.text
        if response.status_code == 200 and re.search(r"correct\s+username\s+and\s+password", text):
            normal += 1
            continue
        ended = f"then {response.status_code}"
        title = re.search(r"<title>(.*?)</title>", text, re.S)
        if title:
            ended += f" ({' '.join(title.group(1).split())[:40]})"
        break
    return [("wrong passwords answered as the normal form", f"{normal} ({ended})", "", "a lock-out")]


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measure", "value", "past the goal", "goal")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(title)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout to run (default: the one this script sits in)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of a SQLite file")
    parser.add_argument("--clients", type=int, default=20, help="simultaneous creates against each generation cap")
    parser.add_argument("--subject-clients", type=int, default=10, help="simultaneous subject creates")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of (a), each by fresh users (races do not lose every time)")
    parser.add_argument("--skip", action="append", default=[], choices=["caps", "upload", "login"], help="leave a measure out (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (database, media, runserver.log)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    folder = Path(tempfile.mkdtemp(prefix="imagesite-seams-"))
    if "upload" not in args.skip:
        big_pngs()  # before the server starts: making them is not part of any measure
    rows: list[tuple[str, str, str, str]] = []
    try:
        with _database(folder, args.postgres) as database_url:
            site = Site(repo, folder, database_url)
            site.manage("migrate", "--noinput")
            keys = site.shell(SETUP % {"users": users_for(args.rounds), "password": PASSWORD})
            site.start()
            try:
                requests.get(site.base + "/api/v1/generations/", headers=auth(keys["big"]), timeout=120)  # warm: URLconf, views
                if "caps" not in args.skip:
                    rows += measure_caps(site, keys, args.clients, args.subject_clients, args.rounds)
                if "upload" not in args.skip:
                    rows += measure_big_upload(site, keys["big"])
                if "login" not in args.skip:
                    rows += measure_login(site)
            finally:
                site.stop()
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(f"seams: {repo} on {'PostgreSQL' if args.postgres else 'SQLite'}", rows)


if __name__ == "__main__":
    main()
