"""Retake docs/gallery.png: a gallery of images from the demo model's example prompts.

    .venv/bin/python docs/screenshot_gallery.py [--images 8] [--out docs/gallery.png] [--url URL]

Without --url it starts its own site on a throwaway SQLite database and media folder under
build/screenshot/ (runserver on a free port plus a qcluster), so your own data is never touched; with
--url it uses a running site (e.g. `make run`'s http://127.0.0.1:8000). Either way it signs up a fresh
user, generates through the pages with Debian's chromium (Playwright, headless), waits for every job,
and screenshots the gallery.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "screenshot"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_site() -> tuple[str, list[subprocess.Popen]]:
    """Migrate a throwaway database, then runserver + qcluster on it, each in its own process group."""
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "media").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="imagesite.settings", IMAGESITE_SQLITE_PATH=str(WORK / "db.sqlite3"),
               IMAGESITE_MEDIA_ROOT=str(WORK / "media"), PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = _free_port()
    procs = []
    for name, cmd in (("web", ["runserver", f"127.0.0.1:{port}", "--noreload"]), ("worker", ["qcluster"])):
        log = open(WORK / f"{name}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "manage.py", *cmd], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not ("running" in (WORK / "worker.log").read_text(errors="replace") and _answers(port)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            _stop(procs)
            sys.exit("the site did not start; see build/screenshot/*.log")
        time.sleep(0.2)
    return url, procs


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _prompts(count: int) -> list[str]:
    info = json.loads((ROOT / "generation" / "demo_model" / "imagesite.json").read_text())
    examples = info["example_prompts"]
    return [examples[i % len(examples)] for i in range(count)]


def take(url: str, images: int, out: Path, username: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 600})
        page.set_default_timeout(30_000)
        page.goto(f"{url}/accounts/signup/")
        page.fill("#id_username", username)
        page.fill("#id_password1", "a-long-enough-passphrase-42")
        page.fill("#id_password2", "a-long-enough-passphrase-42")
        page.click("button[type=submit]")
        jobs = []
        for prompt in _prompts(images):
            page.goto(f"{url}/")
            page.fill("#id_prompt", prompt)
            page.click("button.primary")
            page.wait_for_url("**/generations/*/")
            jobs.append(page.url)
            print(f"queued {prompt!r}: {page.url}", flush=True)
        for job in jobs:  # the worker runs them one after another
            page.goto(job)
            expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=600_000)
        page.goto(f"{url}/gallery/")
        expect(page.locator(".gallery a.tile img")).to_have_count(images)
        page.wait_for_function("() => [...document.querySelectorAll('.gallery img')].every(i => i.complete && i.naturalWidth)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery.png")
    parser.add_argument("--url", help="use a running site instead of starting one")
    args = parser.parse_args()
    if args.url:
        take(args.url.rstrip("/"), args.images, args.out, f"demo{int(time.time())}")
        return
    url, procs = _start_site()
    try:
        take(url, args.images, args.out, "demo")
    finally:
        _stop(procs)


if __name__ == "__main__":
    main()
