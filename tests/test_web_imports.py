"""The web process never imports torch, diffusers or their friends (DESIGN.md, "The web process never
imports torch/diffusers"; issue 14).

A fresh interpreter sets Django up, migrates a temporary SQLite database, makes one row of each kind
the pages show, then requests every URL pattern of the project — anonymous, as the owner and as a
superuser (the admin) — and finally posts an empty form to each non-admin URL as the owner, since
validation is where lazy imports hide. It prints which heavy modules got loaded and, for each, the
first request that loaded it. It must be a fresh process: the test process itself has long since
imported torch for other tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Fewer URLs than this means the walk went wrong (the project has ~60 patterns of its own, the admin
# ~100 more), not that the project shrank.
MIN_URLS = 100
# Pages that must render for their owner, or the check proves nothing: they build the generate and
# training forms and show each kind of row.
OWNER_PAGES = ("/", "/gallery/", "/generations/1/", "/images/1/", "/subjects/", "/subjects/1/", "/training/1/")

SCRIPT = textwrap.dedent(
    r'''
    import io, json, re, sys

    import django

    HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "cv2")
    first_loaded_by = {}


    def heavy_loaded():
        return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)


    def note(where):
        for module in heavy_loaded():
            first_loaded_by.setdefault(module.split(".")[0], where)


    import os, traceback

    import_chains = {}


    class _WhoImports:
        """Remembers the project lines that led to each heavy package's first import."""

        def find_spec(self, fullname, path=None, target=None):
            package = fullname.split(".")[0]
            if package in HEAVY and package not in import_chains:
                root = os.getcwd() + os.sep
                import_chains[package] = [
                    f"{frame.filename[len(root):]}:{frame.lineno}"
                    for frame in traceback.extract_stack()
                    if frame.filename.startswith(root) and "/.venv/" not in frame.filename
                ]
            return None


    sys.meta_path.insert(0, _WhoImports())

    django.setup()
    note("django.setup()")

    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.management import call_command
    from django.test import Client
    from django.urls import URLPattern, URLResolver, Resolver404, get_resolver, resolve, reverse
    from django.utils.regex_helper import normalize
    from PIL import Image

    call_command("migrate", verbosity=0)
    note("migrate")


    def png():
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
        return ContentFile(buffer.getvalue())


    # One row of each kind, so detail pages render (a fresh database: every first row has pk 1).
    from api.models import ApiToken
    from generation.models import GeneratedImage, Generation
    from imagesite.jobs import JobStatus
    from training.models import Subject, SubjectPhoto, TrainingRun

    User = get_user_model()
    owner = User.objects.create_user("owner", password="pw-for-the-import-check")
    admin = User.objects.create_superuser("admin", password="pw-for-the-import-check")
    _, api_key = ApiToken.create_for(owner, "web-imports")
    subject = Subject.objects.create(owner=owner, name="Rex", token="sks", class_noun="dog")
    photo = SubjectPhoto(subject=subject, width=64, height=64, caption="a sks dog")
    photo.image.save("p.jpg", png(), save=False)
    photo.crop.save("c.png", png(), save=False)
    photo.save()
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED)
    generation = Generation.objects.create(
        owner=owner, prompt="a sks dog", seed=7, steps=4, guidance_scale=7.5, width=64, height=64,
        scheduler="dpmpp_2m", num_images=1, status=JobStatus.SUCCEEDED, subject=subject,
    )
    image = GeneratedImage(generation=generation, index=0, seed=7, width=64, height=64)
    image.file.save("i.png", png(), save=False)
    image.thumbnail.save("t.png", png(), save=False)
    image.save()
    note("creating rows")


    def leaves(patterns, prefix=()):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from leaves(entry.url_patterns, prefix + (entry.pattern.regex.pattern,))
            elif isinstance(entry, URLPattern):
                yield prefix + (entry.pattern.regex.pattern,), entry


    CANDIDATES = ("1", "auth", "a")  # ids (all 1), an admin app label, a word


    def url_for(regexes, pattern):
        """A path that resolves to this very pattern, its arguments filled from CANDIDATES."""
        forms = [normalize(regex)[0] for regex in regexes]
        template = "/" + "".join(form for form, _ in forms)
        params = [param for _, names in forms for param in names]
        choices = [{}]
        for param in params:
            choices = [dict(c, **{param: value}) for c in choices for value in CANDIDATES]
        for values in choices:
            path = template % values
            try:
                if resolve(path).func is pattern.callback:
                    return path
            except Resolver404:
                pass
        return None


    urls, unbuildable = [], []
    for regexes, pattern in leaves(get_resolver().url_patterns):
        path = url_for(regexes, pattern)
        (urls.append(path) if path else unbuildable.append("".join(regexes)))
    urls = sorted(set(urls))
    note("loading the URLconf")

    # A view that raises answers 500 (logged to stderr) instead of stopping the walk.
    anonymous, signed_in, superuser = (Client(raise_request_exception=False) for _ in range(3))
    token = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {api_key}")
    signed_in.force_login(owner)
    superuser.force_login(admin)
    passes = [("GET", "anonymous", anonymous), ("GET", "owner", signed_in), ("GET", "token", token)]
    passes.append(("GET", "admin", superuser))
    # Last, as the owner, an empty POST to each non-admin URL: forms validate (and deletes delete).
    passes.append(("POST", "owner", signed_in))

    logout = reverse("logout")
    answers = []
    for method, who, client in passes:
        for path in urls:
            if method == "POST" and (path.startswith("/admin/") or path == logout):
                continue  # the admin's own forms are Django's; logging out would end the pass
            response = client.get(path) if method == "GET" else client.post(path, {})
            answers.append({"method": method, "who": who, "path": path, "status": response.status_code})
            note(f"{method} {path} ({who})")

    print(json.dumps({
        "urls": urls,
        "unbuildable": unbuildable,
        "answers": answers,
        "heavy": heavy_loaded(),
        "first_loaded_by": first_loaded_by,
        "import_chains": import_chains,
    }))
    '''
)


def run_web_process(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="imagesite.settings",
        IMAGESITE_SQLITE_PATH=str(tmp_path / "web.sqlite3"),
        IMAGESITE_MEDIA_ROOT=str(tmp_path / "media"),
        DJANGO_ALLOWED_HOSTS="testserver",  # the test client's host; no test runner here to add it
    )
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"the web process failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def test_web_process_never_imports_torch_and_every_url_answers(tmp_path):
    result = run_web_process(tmp_path)
    print("requested:", *result["urls"], sep="\n  ")  # shown with -s or on failure: nothing skipped silently

    assert not result["unbuildable"], f"URL patterns the walk could not fill in: {result['unbuildable']}"
    server_errors = [f"{a['method']} {a['path']} ({a['who']}): {a['status']}" for a in result["answers"] if a["status"] >= 500]
    assert not server_errors, "server errors:\n  " + "\n  ".join(server_errors) + "\n" + result["stderr"][-6000:]
    assert len(result["urls"]) >= MIN_URLS, f"only {len(result['urls'])} URLs found: {result['urls']}"
    owner_ok = {a["path"] for a in result["answers"] if (a["method"], a["who"], a["status"]) == ("GET", "owner", 200)}
    assert set(OWNER_PAGES) <= owner_ok, f"pages that did not render for their owner: {sorted(set(OWNER_PAGES) - owner_ok)}"

    if result["heavy"]:
        first = "\n  ".join(
            f"{package}: first loaded by {where}, through " + " -> ".join(result["import_chains"].get(package, []))
            for package, where in sorted(result["first_loaded_by"].items())
        )
        pytest.fail(f"the web process imported {len(result['heavy'])} heavy module(s):\n  {first}", pytrace=False)
