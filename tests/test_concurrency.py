"""Quotas and uniqueness hold under concurrency and at both edges (issue 14), on SQLite and PostgreSQL.

Real threads fire together (a barrier) at a live server: pytest-django's `live_server` on the SQLite
test file, and `manage.py runserver` on a throwaway PostgreSQL. No worker runs, so admitted jobs stay
queued, which is what the caps count. The page-and-API case drives both edges in-process.
"""
from __future__ import annotations

import html
from typing import Callable

import pytest
import requests
from django.apps import apps
from django.urls import reverse

from .concurrency_support import (  # noqa: F401  (postgres_env, postgres_server: fixtures)
    GENERATIONS, assert_admitted_exactly, assert_json_error, bearer, fire_together, generations_of, page_form, png,
    post_generations, postgres_env, postgres_generations, postgres_server, postgres_user, set_limits, statuses, stored_photos,
)
from .services import PG_BIN

SUBJECTS = "/api/v1/subjects/"
PHOTO_CAP = 30

live = pytest.mark.django_db(transaction=True)  # threads of the live server must see committed rows
# The shared worker of earlier tests would run the admitted jobs and free places under the caps.
pytestmark = pytest.mark.usefixtures("no_worker")
# Each generation cap on its own, the other limit set out of reach.
CAPS = pytest.mark.parametrize("name, limits, cap", [
    pytest.param("queued", {"max_queued_jobs": 10, "generations_per_hour": 1000}, 10, id="queued_jobs_cap"),
    pytest.param("hourly", {"generations_per_hour": 5, "max_queued_jobs": 1000}, 5, id="hourly_limit"),
])


# --- SQLite, through pytest-django's live server --------------------------------------------------
@live
@CAPS
def test_simultaneous_creates_never_pass_the_cap(live_server, owner, name, limits, cap):
    set_limits(owner, **limits)
    answers = post_generations(live_server.url, bearer(owner))
    assert_admitted_exactly(answers, cap=cap)
    assert generations_of(owner) == cap


def subject_creates_all_succeed(base_url: str, headers: dict[str, str]) -> None:
    """Ten creates at once without a token: the server suggests one to each, and ten requests must not
    all get the same suggestion (an IntegrityError, a 500). The token is suggested under the owner's
    lock, so every create gets its own."""
    def call(i: int) -> Callable[[], requests.Response]:
        return lambda: requests.post(base_url + SUBJECTS, json={"name": f"S{i}", "class_noun": "dog"}, headers=headers, timeout=120)

    answers = fire_together([call(i) for i in range(10)])
    seen = statuses(answers)
    assert set(seen) == {201}, f"{dict(seen)}; bodies: {[a.body for a in answers if a.status != 201][:2]}"
    tokens = [a.body["token"] for a in answers]
    assert len(tokens) == len(set(tokens)) == 10, tokens
    stored = requests.get(f"{base_url}{SUBJECTS}?page_size=100", headers=headers, timeout=60).json()["results"]
    assert sorted(subject["token"] for subject in stored) == sorted(tokens)


def uploads_stay_within_the_cap(base_url: str, headers: dict[str, str]) -> None:
    """Three 15-photo uploads at once to one subject, cap 30: the cap is counted under the owner's
    lock, so the uploads take turns and exactly 30 are kept (the last one finds no room: 400)."""
    created = requests.post(base_url + SUBJECTS, json={"name": "Rex", "class_noun": "dog", "token": "sks"}, headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    url = f"{base_url}{SUBJECTS}{created.json()['id']}/photos/"

    def call(batch: int) -> Callable[[], requests.Response]:
        # Distinct colours, so no photo is refused as a copy of another.
        files = [("photos", (f"b{batch}-{i}.png", png((batch * 80, i * 16, 255 - i * 16)), "image/png")) for i in range(15)]
        return lambda: requests.post(url, files=files, headers=headers, timeout=300)

    answers = fire_together([call(batch) for batch in range(3)])
    seen = statuses(answers)
    assert seen == {202: 2, 400: 1}, f"{dict(seen)}; bodies: {[a.body for a in answers if a.status >= 500][:2]}"
    kept = [p for p in requests.get(url, headers=headers, timeout=60).json() if p["status"] != "rejected"]
    assert len(kept) == PHOTO_CAP == sum(len(a.body["accepted"]) for a in answers if a.status == 202)


@live
def test_simultaneous_subject_creates_never_500(live_server, owner):
    subject_creates_all_succeed(live_server.url, bearer(owner))
    assert apps.get_model("training.Subject").objects.filter(owner=owner).count() == 10


@live
def test_simultaneous_uploads_never_pass_the_photo_cap(live_server, owner):
    set_limits(owner, uploads_per_hour=1000)  # the cap alone, the hourly upload limit out of reach
    uploads_stay_within_the_cap(live_server.url, bearer(owner))
    assert stored_photos(apps.get_model("training.Subject").objects.get(owner=owner).pk) == PHOTO_CAP


# --- both edges, one refusal ----------------------------------------------------------------------
@pytest.mark.django_db
def test_page_gives_the_apis_refusal_once_the_api_filled_the_queue(owner, owner_client):
    from rest_framework.test import APIClient

    set_limits(owner, max_queued_jobs=2, generations_per_hour=1000)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=bearer(owner)["Authorization"])
    for i in range(2):
        assert api.post(GENERATIONS, {"prompt": f"a red circle {i}"}, format="json").status_code == 202
    refused = api.post(GENERATIONS, {"prompt": "one too many"}, format="json")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    detail = refused.json()["detail"]

    page = reverse("generation-new")
    form = page_form(owner_client.get(page).content.decode(), "prompt")
    form["prompt"] = "a blue square"
    response = owner_client.post(page, form, follow=True)
    # However the page shows it (429 with the form, or a redirect to a flash message), no job is
    # added and the words are the API's.
    assert generations_of(owner) == 2
    assert detail in html.unescape(response.content.decode()), (response.status_code, detail)


# --- PostgreSQL, through manage.py runserver ------------------------------------------------------
def postgres(test):
    """A real PostgreSQL of its own: the scale-out lane (make test-fast skips it)."""
    return pytest.mark.scale_out(pytest.mark.skipif(not PG_BIN, reason="needs Debian's postgresql (.ci/run installs it)")(test))


@postgres
@CAPS
def test_simultaneous_creates_never_pass_the_cap_on_postgres(postgres_env, postgres_server, name, limits, cap):
    # One database for the module: each case makes a user of its own.
    headers = postgres_user(postgres_env, name, **limits)
    assert_admitted_exactly(post_generations(postgres_server, headers), cap=cap)
    assert postgres_generations(postgres_env, name) == cap


@postgres
def test_simultaneous_subject_creates_never_500_on_postgres(postgres_env, postgres_server):
    subject_creates_all_succeed(postgres_server, postgres_user(postgres_env, "subjects"))


@postgres
def test_simultaneous_uploads_never_pass_the_photo_cap_on_postgres(postgres_env, postgres_server):
    uploads_stay_within_the_cap(postgres_server, postgres_user(postgres_env, "uploads", uploads_per_hour=1000))
