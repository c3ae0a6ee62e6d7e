"""Helpers for tests/test_concurrency.py: requests fired together from threads, models looked up by
label (they may move between apps), the Generate page's form as a browser would post it, and a
throwaway PostgreSQL with `manage.py runserver` on it."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from django.apps import apps

from .services import SHELL_MODEL_LOOKUP, free_port, postgres_cluster, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent
GENERATIONS = "/api/v1/generations/"
CLIENTS = 20
ERROR_KEYS = {"status", "code", "detail", "errors"}


# --- requests and rows ----------------------------------------------------------------------------
def _model(*labels: str):
    """The first of `labels` that is installed: models may move between apps during the refactor."""
    for label in labels:
        try:
            return apps.get_model(label)
        except LookupError:
            continue
    raise LookupError(f"none of {labels} is installed")


def set_limits(user, **limits: int) -> None:
    _model("imagesite.UserLimits", "api.UserLimits").objects.update_or_create(user=user, defaults=limits)


def bearer(user) -> dict[str, str]:
    _, key = _model("api.ApiToken", "imagesite.ApiToken").create_for(user, "concurrency")
    return {"Authorization": f"Bearer {key}"}


def generations_of(user) -> int:
    return _model("generation.Generation").objects.filter(owner=user).count()


def stored_photos(subject_id: int) -> int:
    """Photo rows of the subject that are not rejected (after the refactor, intake may leave them
    "pending" for a worker; those count against the cap too)."""
    model = _model("training.SubjectPhoto")
    photos = model.objects.filter(subject_id=subject_id)
    if any(field.name == "status" for field in model._meta.get_fields()):
        photos = photos.exclude(status="rejected")
    return photos.count()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict | list | str


def fire_together(calls: list[Callable[[], requests.Response]]) -> list[Answer]:
    """Run each call in its own thread, all released at once; a call that raised is a test failure."""
    barrier = threading.Barrier(len(calls))
    answers: list[Answer | BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=60)
        try:
            response = calls[index]()
            try:
                body = response.json()
            except ValueError:
                body = response.text[:500]
            answers[index] = Answer(response.status_code, dict(response.headers), body)
        except BaseException as exc:  # noqa: BLE001 - reported below with the others
            answers[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    failures = [a for a in answers if not isinstance(a, Answer)]
    assert not failures, f"requests that got no answer: {failures}"
    return answers  # type: ignore[return-value]


def statuses(answers: list[Answer]) -> Counter:
    return Counter(a.status for a in answers)


def assert_json_error(answer: Answer, status: int) -> None:
    assert isinstance(answer.body, dict) and set(answer.body) == ERROR_KEYS, answer.body
    assert answer.body["status"] == status, answer.body


def assert_admitted_exactly(answers: list[Answer], cap: int) -> None:
    """`cap` creates answered 202 and every other one 429 with Retry-After and the error shape."""
    seen = statuses(answers)
    assert set(seen) <= {202, 429} and seen[202] == cap, f"{dict(seen)} (cap {cap}); 5xx bodies: {[a.body for a in answers if a.status >= 500][:2]}"
    for answer in answers:
        if answer.status == 429:
            assert int(answer.headers.get("Retry-After", "0")) > 0, answer.headers
            assert_json_error(answer, 429)


def post_generations(base_url: str, headers: dict[str, str], count: int = CLIENTS) -> list[Answer]:
    def call(i: int) -> Callable[[], requests.Response]:
        return lambda: requests.post(base_url + GENERATIONS, json={"prompt": f"a red circle {i}"}, headers=headers, timeout=120)

    return fire_together([call(i) for i in range(count)])


def png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class _FormFields(HTMLParser):
    """The named fields of the POST form holding `marker`, with the values the page filled in."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker, self.forms, self._current, self._textarea, self._select = marker, [], None, None, None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "form":
            if (a.get("method") or "").lower() == "post":
                self._current = {}
            return
        if self._current is None:
            return
        name = a.get("name")
        if tag == "option" and self._select:
            # What a browser sends: the selected option, else the first one.
            if "selected" in a or self._current[self._select] is None:
                self._current[self._select] = a.get("value") or ""
        elif not name:
            return
        elif tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind != "submit" and (kind not in ("checkbox", "radio") or "checked" in a):
                self._current[name] = a.get("value") or ("on" if kind == "checkbox" else "")
        elif tag == "textarea":
            self._textarea = name
            self._current[name] = ""
        elif tag == "select":
            self._select = name
            self._current[name] = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._textarea:
            self._current[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None
        elif tag == "form" and self._current is not None:
            self.forms.append(self._current)
            self._current = None

    def fields(self) -> dict[str, str]:
        found = [form for form in self.forms if self.marker in form]
        assert found, f"no POST form with a {self.marker!r} field"
        return {name: value or "" for name, value in found[0].items()}


def page_form(page: str, marker: str) -> dict[str, str]:
    parser = _FormFields(marker)
    parser.feed(page)
    return parser.fields()


# --- PostgreSQL, through manage.py runserver ------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL cluster on loopback, migrated, as the environment for manage.py."""
    with postgres_cluster() as cluster:
        env = {**os.environ, "DATABASE_URL": cluster.url(), "DJANGO_DEBUG": "1",
               "DJANGO_SETTINGS_MODULE": "imagesite.settings", "PYTHONUNBUFFERED": "1",
               "IMAGESITE_MEDIA_ROOT": str(tmp_path_factory.mktemp("pg-media"))}
        env.pop("REDIS_URL", None)  # the ORM broker on PostgreSQL: enqueueing only writes a row
        _manage(env, "migrate", "--noinput")
        yield env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def postgres_server(postgres_env, tmp_path_factory) -> Iterator[str]:
    """`manage.py runserver` (threaded) on the PostgreSQL database; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("pg-web") / "runserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=ROOT,
                                env=postgres_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_port(port, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}:\n{log_path.read_text(errors='replace')[-3000:]}") from None
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)


USER_WITH_LIMITS = SHELL_MODEL_LOOKUP + textwrap.dedent("""
    from django.contrib.auth.models import User

    user = User.objects.create_user({name!r}, password="a-long-enough-password")
    model("imagesite.UserLimits", "api.UserLimits").objects.create(user=user, **{limits!r})
    print(model("api.ApiToken", "imagesite.ApiToken").create_for(user, "concurrency")[1])
""")


def postgres_user(env: dict[str, str], name: str, **limits: int) -> dict[str, str]:
    key = _manage(env, "shell", "-c", USER_WITH_LIMITS.format(name=name, limits=limits)).strip().splitlines()[-1]
    return {"Authorization": f"Bearer {key}"}


def postgres_generations(env: dict[str, str], name: str) -> int:
    check = f"from generation.models import Generation; print(Generation.objects.filter(owner__username={name!r}).count())"
    return int(_manage(env, "shell", "-c", check).strip().splitlines()[-1])
