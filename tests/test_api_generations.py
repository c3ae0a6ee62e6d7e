"""/api/v1/generations/: create (202, queued on commit), list, retrieve, cancel, delete."""
from __future__ import annotations

import pytest
from django_q.models import OrmQ

from generation.models import GeneratedImage, Generation
from imagesite.jobs import JobStatus

from .api_support import anon_api, assert_error, other_api, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/generations/"


def test_create_returns_202_with_the_queued_job(owner, owner_api):
    response = owner_api.post(URL, {"prompt": "a red circle", "seed": 5, "num_images": 2}, format="json")
    assert response.status_code == 202
    body = response.json()
    generation = Generation.objects.get(pk=body["id"])
    assert generation.owner == owner and body["status"] == "queued" and body["seed"] == 5
    assert body["url"].endswith(f"/api/v1/generations/{generation.pk}/") and response["Location"] == body["url"]
    assert body["cancel_url"].endswith("/cancel/") and body["images"] == []
    assert OrmQ.objects.count() == 1  # queued after the commit


def test_create_fills_the_models_defaults_and_a_random_seed(owner_api):
    body = owner_api.post(URL, {"prompt": "a blue square"}, format="json").json()
    models = owner_api.get("/api/v1/models/").json()[0]
    for name, value in models["defaults"].items():
        assert body[name] == value
    assert 0 <= body["seed"] < 2**32


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "ok", "width": 65}, "width"),
        ({"prompt": "ok", "height": 8192}, "height"),
        ({"prompt": "ok", "steps": 0}, "steps"),
        ({"prompt": "ok", "guidance_scale": 99}, "guidance_scale"),
        ({"prompt": "ok", "num_images": 5}, "num_images"),
        ({"prompt": "ok", "seed": -1}, "seed"),
        ({"prompt": "ok", "scheduler": "nope"}, "scheduler"),
        ({"prompt": "ok", "webhook_url": "ftp://example.com/"}, "webhook_url"),
        ({"prompt": "ok", "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
    ],
)
def test_bad_input_is_400_with_the_field_and_nothing_queued(owner_api, data, field):
    assert_error(owner_api.post(URL, data, format="json"), 400, field)
    assert Generation.objects.count() == 0 and OrmQ.objects.count() == 0


def test_form_encoded_body_works_too(owner_api):
    assert owner_api.post(URL, {"prompt": "a red circle"}).status_code == 202


def test_list_is_newest_first_and_only_mine(owner, other_user, owner_api):
    older, newer = make_generation(owner), make_generation(owner)
    make_generation(other_user)
    body = owner_api.get(URL).json()
    assert [g["id"] for g in body["results"]] == [newer.pk, older.pk] and body["next"] is None and body["previous"] is None


def test_list_filters_by_status_and_searches_the_prompt(owner, owner_api):
    done = make_generation(owner, status=JobStatus.SUCCEEDED, prompt="a green triangle")
    make_generation(owner, prompt="a red circle")
    assert [g["id"] for g in owner_api.get(URL, {"status": "succeeded"}).json()["results"]] == [done.pk]
    assert [g["id"] for g in owner_api.get(URL, {"search": "TRIANGLE"}).json()["results"]] == [done.pk]
    assert_error(owner_api.get(URL, {"status": "bogus"}), 400, "status")


def test_list_paginates(owner, owner_api):
    for _ in range(3):
        make_generation(owner)
    body = owner_api.get(URL, {"page_size": 2}).json()
    assert "count" not in body and len(body["results"]) == 2 and body["next"] and body["previous"] is None
    last = owner_api.get(body["next"]).json()
    assert len(last["results"]) == 1 and last["next"] is None
    assert owner_api.get(last["previous"]).json()["results"] == body["results"]
    assert_error(owner_api.get(URL, {"cursor": "bogus"}), 404)


def test_retrieve_has_progress_and_image_links(owner, owner_api):
    image = make_image(owner)
    Generation.objects.filter(pk=image.generation_id).update(progress_step=4, progress_total=4)
    body = owner_api.get(f"{URL}{image.generation_id}/").json()
    assert body["status"] == "succeeded" and body["progress"]["percent"] == 100
    assert body["images"][0]["id"] == image.pk
    assert owner_api.get(body["images"][0]["file_url"]).status_code == 200


def test_cancel_a_queued_generation(owner, owner_api):
    generation = make_generation(owner)
    body = owner_api.post(f"{URL}{generation.pk}/cancel/").json()
    assert body["status"] == "canceled"
    generation.refresh_from_db()
    assert generation.status == JobStatus.CANCELED


def test_cancel_a_finished_generation_changes_nothing(owner, owner_api):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED)
    assert owner_api.post(f"{URL}{generation.pk}/cancel/").json()["status"] == "succeeded"


def test_delete_removes_the_generation_and_its_files(owner, owner_api, media_dir):
    image = make_image(owner)
    path = media_dir / image.file.name
    assert path.exists()
    assert owner_api.delete(f"{URL}{image.generation_id}/").status_code == 204
    assert not Generation.objects.exists() and not GeneratedImage.objects.exists() and not path.exists()


@pytest.mark.parametrize("method, suffix", [("get", ""), ("delete", ""), ("post", "cancel/")])
def test_other_users_generation_is_404(owner, other_api, method, suffix):
    generation = make_generation(owner)
    assert_error(getattr(other_api, method)(f"{URL}{generation.pk}/{suffix}"), 404)
    generation.refresh_from_db()
    assert generation.status == JobStatus.QUEUED


@pytest.mark.parametrize("method, suffix", [("get", ""), ("post", ""), ("get", "{pk}/"), ("delete", "{pk}/"), ("post", "{pk}/cancel/")])
def test_anonymous_is_401(owner, anon_api, method, suffix):
    generation = make_generation(owner)
    response = getattr(anon_api, method)(URL + suffix.format(pk=generation.pk))
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method, suffix", [("put", ""), ("delete", ""), ("put", "{pk}/"), ("patch", "{pk}/"), ("get", "{pk}/cancel/")])
def test_wrong_method_is_405(owner, owner_api, method, suffix):
    generation = make_generation(owner)
    assert_error(getattr(owner_api, method)(URL + suffix.format(pk=generation.pk)), 405)


def test_an_id_too_large_for_the_database_is_404(owner_api):
    assert_error(owner_api.get(f"{URL}{2**70}/"), 404)


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"prompt": "a (red:1.2.3) circle"}, "prompt", "is not a number"),
    ({"prompt": "a [red:blue:0.5] circle"}, "prompt", "Prompt editing"),
    ({"prompt": "a red circle", "negative_prompt": "(blurry:1.2.3)"}, "negative_prompt", "is not a number"),
    ({"prompt": "a red circle <lora:ink:0.8>"}, "prompt", "No LoRA called “ink”"),
])
def test_a_prompt_that_parses_badly_is_a_field_error_and_nothing_is_queued(owner_api, data, field, words):
    response = owner_api.post(URL, data, format="json")
    assert_error(response, 400, field)
    assert words in str(response.json()) and not Generation.objects.exists() and not OrmQ.objects.exists()


def test_a1111_weights_are_accepted(owner_api):
    response = owner_api.post(URL, {"prompt": "a (red:1.3) circle on a [blue] background, \\(literal\\)"}, format="json")
    assert response.status_code == 202
