"""/api/v1/images/: list, retrieve, download, thumbnail, favourite on/off, delete."""
from __future__ import annotations

import pytest

from generation.models import GeneratedImage

from .api_support import anon_api, assert_error, other_api, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation, make_image, png_bytes

pytestmark = pytest.mark.django_db

URL = "/api/v1/images/"


def test_list_is_mine_newest_first_with_settings(owner, other_user, owner_api):
    first = make_image(owner, prompt="a red circle")
    second = make_image(owner, prompt="a blue square", seed=99)
    make_image(other_user)
    body = owner_api.get(URL).json()
    assert [i["id"] for i in body["results"]] == [second.pk, first.pk]
    item = body["results"][0]
    assert item["prompt"] == "a blue square" and item["seed"] == 99 and item["steps"] == 4
    assert item["scheduler"] == "dpmpp_2m" and item["width"] == 64 and item["favourite"] is False
    assert "subject" in item


def test_list_filters(owner, owner_api):
    circle, square = make_image(owner, prompt="a red circle"), make_image(owner, prompt="a blue square")
    GeneratedImage.objects.filter(pk=square.pk).update(favourite=True)
    ids = lambda params: [i["id"] for i in owner_api.get(URL, params).json()["results"]]  # noqa: E731
    assert ids({"search": "circle"}) == [circle.pk]
    assert ids({"search": "CIRCLE red"}) == [circle.pk]  # every word, any order, any case
    assert ids({"search": '"circle red"'}) == []  # a quoted phrase stays whole
    assert ids({"favourite": "true"}) == [square.pk]
    assert ids({"favourite": "false"}) == [circle.pk]
    assert ids({"generation": circle.generation_id}) == [circle.pk]
    assert_error(owner_api.get(URL, {"favourite": "maybe"}), 400, "favourite")
    assert_error(owner_api.get(URL, {"generation": "x"}), 400, "generation")


def test_retrieve_and_download(owner, owner_api):
    image = make_image(owner)
    body = owner_api.get(f"{URL}{image.pk}/").json()
    assert body["id"] == image.pk and body["generation"] == image.generation_id
    response = owner_api.get(body["file_url"], HTTP_ACCEPT="image/png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert "attachment" in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == png_bytes()
    thumb = owner_api.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/png"


def test_favourite_on_and_off(owner, owner_api):
    image = make_image(owner)
    assert owner_api.post(f"{URL}{image.pk}/favourite/").json()["favourite"] is True
    image.refresh_from_db()
    assert image.favourite
    assert owner_api.delete(f"{URL}{image.pk}/favourite/").json()["favourite"] is False
    image.refresh_from_db()
    assert not image.favourite


def test_delete_removes_the_file(owner, owner_api, media_dir, django_capture_on_commit_callbacks):
    image = make_image(owner)
    path = media_dir / image.file.name
    with django_capture_on_commit_callbacks(execute=True):
        assert owner_api.delete(f"{URL}{image.pk}/").status_code == 204
    assert not GeneratedImage.objects.exists() and not path.exists()


def test_image_of_a_generation_stays_listed_in_its_generation(owner, owner_api):
    generation = make_generation(owner)
    image = make_image(owner, generation=generation)
    assert owner_api.get(f"/api/v1/generations/{generation.pk}/").json()["images"][0]["id"] == image.pk


SUFFIXES = [("get", ""), ("get", "download/"), ("get", "thumbnail/"), ("post", "favourite/"), ("delete", "favourite/"), ("delete", "")]


@pytest.mark.parametrize("method, suffix", SUFFIXES)
def test_other_users_image_is_404(owner, other_api, method, suffix):
    image = make_image(owner)
    assert_error(getattr(other_api, method)(f"{URL}{image.pk}/{suffix}"), 404)
    image.refresh_from_db()
    assert not image.favourite


@pytest.mark.parametrize("method, suffix", [("get", "-")] + SUFFIXES)
def test_anonymous_is_401(owner, anon_api, method, suffix):
    image = make_image(owner)
    url = URL if suffix == "-" else f"{URL}{image.pk}/{suffix}"
    assert_error(getattr(anon_api, method)(url), 401)


@pytest.mark.parametrize("method, suffix", [("post", "-"), ("put", ""), ("patch", ""), ("post", "download/"), ("get", "favourite/"), ("put", "favourite/")])
def test_wrong_method_is_405(owner, owner_api, method, suffix):
    image = make_image(owner)
    url = URL if suffix == "-" else f"{URL}{image.pk}/{suffix}"
    assert_error(getattr(owner_api, method)(url), 405)
