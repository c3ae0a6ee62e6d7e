"""Retake the README's screenshots of the pages as they are, in one command:

    .venv/bin/python docs/screenshots.py [--images 8] [--out docs/screenshots] [--url URL] [--width 1280]

writes gallery.png, generate.png, subject.png, mask-editor.png and job-running.png (a job while it renders, with its
live preview) into docs/screenshots/, at desktop width, with Debian's chromium (Playwright, headless).

Without --url it starts its own site on a throwaway SQLite database and media folder under
build/screenshot/ (runserver on a free port plus a qcluster, sign-up open), so your own data is never
touched; with --url it uses a running site whose sign-up is open (e.g. `make run`'s
http://127.0.0.1:8000). It signs up a fresh user through the page, then makes everything through the
REST API with the browser's session and waits on the API's answers: only stable URLs are used (the
Generate page's markup may change without breaking this script).
"""
from __future__ import annotations

import argparse
import io
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
PASSWORD = "a-long-enough-passphrase-42"
# The running job: the most steps and images the form allows, so it renders for several seconds.
RUNNING_JOB = {"steps": 150, "num_images": 4}


# --- a throwaway site -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_site() -> tuple[str, list[subprocess.Popen]]:
    """Migrate a throwaway database, then runserver + qcluster on it, each in its own process group."""
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "media").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="imagesite.settings", IMAGESITE_SQLITE_PATH=str(WORK / "db.sqlite3"),
               IMAGESITE_MEDIA_ROOT=str(WORK / "media"), IMAGESITE_SIGNUP="open", PYTHONUNBUFFERED="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = _free_port()
    procs = []
    for name, cmd in (("web", ["runserver", f"127.0.0.1:{port}", "--noreload"]), ("worker", ["workers"])):
        log = open(WORK / f"{name}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "manage.py", *cmd], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not ("running" in (WORK / "worker.log").read_text(errors="replace") and _answers(port)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            stop_site(procs)
            sys.exit("the site did not start; see build/screenshot/*.log")
        time.sleep(0.2)
    return url, procs


def stop_site(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def example_prompts(count: int) -> list[str]:
    info = json.loads((ROOT / "generation" / "demo_model" / "imagesite.json").read_text())
    examples = info["example_prompts"]
    return [examples[i % len(examples)] for i in range(count)]


def subject_photo(background: tuple[int, int, int], seed: int) -> bytes:
    """A 192 px "photo" of the bench's subject: a square checkered yellow and purple, jittered."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (192, 192), background)
    pen = ImageDraw.Draw(img)
    size = rng.randint(100, 130)
    x0, y0 = 96 - size // 2 + rng.randint(-8, 8), 96 - size // 2 + rng.randint(-8, 8)
    half = size // 2
    for i in range(2):
        for j in range(2):
            colour = (245, 220, 30) if (i + j) % 2 == 0 else (140, 40, 175)
            pen.rectangle([x0 + i * half, y0 + j * half, x0 + (i + 1) * half, y0 + (j + 1) * half], fill=colour)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the browser ------------------------------------------------------------------------------------
class Site:
    """The signed-in browser and the API calls it makes with its session (CSRF header from the cookie)."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url

    def _headers(self) -> dict[str, str]:
        token = next(c["value"] for c in self.page.context.cookies() if c["name"] == "csrftoken")
        return {"X-CSRFToken": token, "Referer": self.url + "/"}

    def post(self, path: str, **kwargs) -> dict:
        response = self.page.request.post(self.url + path, headers=self._headers(), **kwargs)
        if not response.ok:
            sys.exit(f"POST {path}: {response.status} {response.text()[:500]}")
        return response.json()

    def get(self, path_or_url: str) -> dict | list:
        url = path_or_url if path_or_url.startswith("http") else self.url + path_or_url
        response = self.page.request.get(url)
        if not response.ok:
            sys.exit(f"GET {url}: {response.status} {response.text()[:500]}")
        return response.json()

    def wait_job(self, job: dict, until, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(job["url"])
            if until(job):
                return job
            if job["status"] in ("failed", "canceled"):
                sys.exit(f"job {job['id']} {job['status']}: {job.get('error')}")
            time.sleep(0.1)
        sys.exit(f"job {job['id']} still {job['status']} after {timeout_s} s")

    def shoot(self, path: str, out: Path, full_page: bool = True) -> None:
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_function("() => [...document.images].every(i => i.complete)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(out), full_page=full_page)
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  ({path})", flush=True)


def _progress(job: dict) -> float:
    progress = job.get("progress") or {}
    if isinstance(progress, dict):
        step, total = progress.get("step") or 0, progress.get("total") or job["steps"]
        return step / total if total else 0.0
    return float(progress) / 100


def take(url: str, images: int, out: Path, username: str, width: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 800})
        page.set_default_timeout(60_000)
        # Sign up through the page: Django's own form field names.
        page.goto(f"{url}/accounts/signup/")
        page.fill("[name=username]", username)
        page.fill("[name=password1]", PASSWORD)
        page.fill("[name=password2]", PASSWORD)
        page.locator("form[method=post] [type=submit]").first.click()
        page.wait_for_load_state()
        site = Site(page, url)
        site.get("/api/v1/me/")  # signed in, or this exits with the reason

        # The gallery: the demo model's example prompts, rendered one after another by the worker.
        jobs = [site.post("/api/v1/generations/", data={"prompt": prompt}) for prompt in example_prompts(images)]
        for job in jobs:
            site.wait_job(job, lambda j: j["status"] == "succeeded")
        page.goto(f"{url}/gallery/")
        site.shoot("/gallery/", out / "gallery.png")

        # A subject with five photos, once the worker has cropped them and suggested captions.
        subject = site.post("/api/v1/subjects/", data={"name": "Checkers", "class_noun": "square", "token": "sks"})
        backgrounds = [(30, 170, 50), (30, 70, 225), (220, 30, 30), (245, 245, 245), (15, 15, 15)]
        for index, colour in enumerate(backgrounds):
            site.post(f"/api/v1/subjects/{subject['id']}/photos/",
                      multipart={"photos": {"name": f"checkers-{index}.png", "mimeType": "image/png", "buffer": subject_photo(colour, index)}})
        deadline = time.monotonic() + 300
        while any(p["status"] == "pending" for p in site.get(f"/api/v1/subjects/{subject['id']}/photos/")):
            if time.monotonic() > deadline:
                sys.exit("photos still pending after 300 s")
            time.sleep(0.3)
        page.goto(f"{url}/subjects/{subject['id']}/")
        site.shoot(f"/subjects/{subject['id']}/", out / "subject.png")

        # The Generate page filled in by "Generate again" of the first job, the others in its Recent list.
        page.goto(f"{url}/?again={jobs[0]['id']}")
        site.shoot(f"/?again={jobs[0]['id']}", out / "generate.png")

        # The mask painter over a gallery image ("Inpaint" on the image page), a stroke painted across it.
        image_id = site.get(f"/api/v1/generations/{jobs[0]['id']}/")["images"][0]["id"]
        page.goto(f"{url}/?source_image={image_id}&inpaint=1")
        canvas = page.locator("#mask-canvas")
        canvas.wait_for(state="visible")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.35)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), box["y"] + box["height"] * (0.35 + 0.03 * step))
        page.mouse.up()
        site.shoot(f"/?source_image={image_id}&inpaint=1", out / "mask-editor.png")

        # A running job with its live preview, on the Generate page beside the form: loaded once the
        # worker has written a preview a third of the way through, and shot at once (the panel polls).
        for attempt in range(3):
            job = site.post("/api/v1/generations/", data={"prompt": example_prompts(1)[0], **RUNNING_JOB})
            job = site.wait_job(job, lambda j: j["status"] == "succeeded" or (j["status"] == "running" and j.get("preview_url") and _progress(j) >= 0.3))
            if job["status"] != "running":
                print(f"the running job finished before its page loaded; trying again ({attempt + 1}/3)", flush=True)
                continue
            page.goto(f"{url}/?job={job['id']}")
            page.locator("img[src*='preview']").first.wait_for(state="visible", timeout=5_000)
            out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out / "job-running.png"), full_page=True)
            print(f"wrote {out / 'job-running.png'}  (/?job={job['id']}, {job['status']} at {_progress(job):.0%})", flush=True)
            break
        else:
            print("no screenshot of a running job: the worker was too fast three times", file=sys.stderr)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images in the gallery")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--url", help="use a running site (sign-up open) instead of starting one")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    args = parser.parse_args()
    if args.url:
        take(args.url.rstrip("/"), args.images, args.out, f"demo{int(time.time())}", args.width)
        return
    url, procs = start_site()
    try:
        take(url, args.images, args.out, "demo", args.width)
    finally:
        stop_site(procs)


if __name__ == "__main__":
    main()
