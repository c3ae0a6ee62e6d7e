"""Keyset pages (issue 18, "A gallery that stays fast"): the gallery and the API image and generation
lists walk newest first from a key instead of a page number. These tests check that the walk is
right (every image exactly once, in a stable order even when timestamps are equal, with filters on,
while rows are added and deleted) and that no page counts or offsets; how fast it is, at 10,000
images against 100, is bench/gallery_speed.py's business (no timed tests here)."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from api.pagination import Key, newest_first_page
from generation.models import GeneratedImage, Generation
from imagesite.jobs import JobStatus

from .factories import make_generation

pytestmark = pytest.mark.django_db

SAME_TIME = datetime(2026, 3, 10, 12, 0, tzinfo=dt_timezone.utc)


def add_images(owner, count: int, *, prompt: str = "a red circle", per_job: int = 4, same_time: bool = False) -> list[int]:
    """`count` image rows (no files: the pages only link to thumbnails), their ids newest first."""
    rows = []
    for start in range(0, count, per_job):
        job = make_generation(owner, status=JobStatus.SUCCEEDED, prompt=prompt, num_images=min(per_job, count - start))
        rows += [GeneratedImage(generation=job, index=i, seed=i, width=64, height=64, file=f"images/x{job.pk}-{i}.png",
                                thumbnail=f"thumbs/x{job.pk}-{i}.png") for i in range(job.num_images)]
    created = GeneratedImage.objects.bulk_create(rows)
    ids = [row.pk for row in created]
    if same_time:
        GeneratedImage.objects.filter(pk__in=ids).update(created_at=SAME_TIME)
    return list(GeneratedImage.objects.filter(pk__in=ids).order_by("-created_at", "-pk").values_list("pk", flat=True))


def walk_gallery(client, start: str = "", *, params: dict | None = None, link: str = "older_url") -> list[list[int]]:
    """The ids on each page, following `link` from `start` until there is none."""
    pages, url = [], reverse("gallery") + start
    while url:
        response = client.get(url, params or {})
        assert response.status_code == 200
        page = response.context["page"]
        pages.append([image.pk for image in page.object_list])
        url = reverse("gallery") + getattr(page, link) if getattr(page, link) else None
        params = None  # the links carry the query from here on
    return pages


def walk_api(client, url: str, params: dict, link: str = "next") -> list[list[int]]:
    pages, body = [], client.get(url, params).json()
    while True:
        pages.append([row["id"] for row in body["results"]])
        if not body[link]:
            return pages
        body = client.get(body[link]).json()


def flat(pages: list[list[int]]) -> list[int]:
    return [pk for page in pages for pk in page]


def test_images_copy_their_generations_owner(owner):
    ids = add_images(owner, 2)
    assert set(GeneratedImage.objects.filter(pk__in=ids).values_list("owner_id", flat=True)) == {owner.pk}


@pytest.mark.parametrize("same_time", [False, True])
def test_gallery_shows_every_image_once_in_a_stable_order(owner, other_user, owner_client, same_time):
    newest_first = add_images(owner, 53, same_time=same_time)
    add_images(other_user, 5, same_time=same_time)
    pages = walk_gallery(owner_client)
    assert [len(page) for page in pages] == [24, 24, 5] and flat(pages) == newest_first
    # and back from the oldest page: the same images, the last page being the 24 oldest
    back = walk_gallery(owner_client, "?oldest=1", link="newer_url")
    assert back[0] == newest_first[-24:] and flat(back[::-1]) == newest_first


def test_the_first_page_has_no_newer_links_and_the_last_no_older(owner, owner_client):
    add_images(owner, 30)
    first = owner_client.get(reverse("gallery"))
    assert first.context["page"].newer_url is None and "« Newest" not in first.content.decode() and "Older →" in first.content.decode()
    last = owner_client.get(reverse("gallery"), {"oldest": "1"})
    assert last.context["page"].older_url is None and "Older →" not in last.content.decode() and "← Newer" in last.content.decode()
    assert owner_client.get(reverse("gallery"), {"older": "garbage"}).context["page"].newer_url is None  # a bad key: the newest page


def test_filters_stay_on_from_page_to_page(owner, owner_client):
    circles = add_images(owner, 30, prompt="a green circle")
    add_images(owner, 30, prompt="a green square")
    GeneratedImage.objects.filter(pk__in=circles[::2]).update(favourite=True)
    pages = walk_gallery(owner_client, params={"q": "circle green"})
    assert [len(page) for page in pages] == [24, 6] and flat(pages) == circles
    assert flat(walk_gallery(owner_client, params={"q": "circle", "favourites": "1"})) == circles[::2]


def test_images_added_or_deleted_meanwhile_are_neither_repeated_nor_skipped(owner, owner_client):
    newest_first = add_images(owner, 40, same_time=True)
    first = owner_client.get(reverse("gallery")).context["page"]
    add_images(owner, 4)  # new images go on top: page numbers would shift, keys do not
    GeneratedImage.objects.filter(pk=newest_first[23]).delete()  # the key's own row
    rest = walk_gallery(owner_client, first.older_url)
    assert [image.pk for image in first.object_list] + flat(rest) == newest_first


def test_a_page_makes_no_count_and_no_offset(owner, owner_client):
    add_images(owner, 60)
    with CaptureQueriesContext(connection) as first_queries:
        first = owner_client.get(reverse("gallery")).context["page"]
    with CaptureQueriesContext(connection) as queries:
        owner_client.get(reverse("gallery") + first.older_url)
    sql = " ".join(query["sql"].upper() for query in queries)
    assert "COUNT(" not in sql and "OFFSET" not in sql

    def image_queries(captured) -> int:
        return sum('FROM "GENERATION_GENERATEDIMAGE"' in query["sql"].upper() for query in captured)

    assert image_queries(first_queries) == 1 and image_queries(queries) == 2  # the rows; away from the top, an EXISTS for newer ones


@pytest.mark.skipif(connection.vendor != "sqlite", reason="reads SQLite's query plan")
def test_an_index_serves_the_order_without_a_sort(owner):
    add_images(owner, 8)
    key = Key(SAME_TIME, 5)
    queryset = GeneratedImage.objects.for_user(owner).select_related("generation").filter(key.older()).order_by("-created_at", "-pk")
    plan = queryset[:25].explain()
    assert "image_owner_newest" in plan and "TEMP B-TREE" not in plan
    plan = Generation.objects.for_user(owner).filter(key.older()).order_by("-created_at", "-pk")[:21].explain()
    assert "generation_owner_newest" in plan and "TEMP B-TREE" not in plan


def test_key_tokens_are_exact_and_malformed_ones_are_none():
    key = Key(datetime(2026, 3, 10, 12, 0, 0, 123456, tzinfo=dt_timezone.utc), 42)
    assert Key.parse(key.token()) == key and Key.parse(Key(datetime(1960, 1, 1, tzinfo=dt_timezone.utc), 1).token()).pk == 1
    for bad in ("", "12", "1_", "_1", "1.5_2", "999999999999999999_1", "1234567890123456789_1", f"1_{2**63}", None):
        assert Key.parse(bad) is None, bad


def test_newest_first_page_of_nothing(owner):
    page = newest_first_page(GeneratedImage.objects.for_user(owner), 5, after=Key(SAME_TIME, 1))
    assert page.rows == [] and page.older is None and page.newer is None


def test_api_images_walk_both_ways_with_filters(owner, other_user, owner_client):
    reds = add_images(owner, 30, prompt="a red circle", same_time=True)
    add_images(owner, 8, prompt="a blue square", same_time=True)
    add_images(other_user, 8, prompt="a red circle")
    pages = walk_api(owner_client, "/api/v1/images/", {"search": "red", "page_size": 7})
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2] and flat(pages) == reds
    last = owner_client.get("/api/v1/images/", {"search": "red", "page_size": 7}).json()
    while last["next"]:
        assert "search=red" in last["next"] and "page_size=7" in last["next"]
        last = owner_client.get(last["next"]).json()
    back = [[row["id"] for row in last["results"]]]
    while last["previous"]:
        last = owner_client.get(last["previous"]).json()
        back.append([row["id"] for row in last["results"]])
    assert back == pages[::-1] and last["previous"] is None


def test_api_generations_walk_once_each(owner, owner_client):
    add_images(owner, 12, per_job=1)
    newest_first = list(Generation.objects.for_user(owner).values_list("pk", flat=True))
    assert flat(walk_api(owner_client, "/api/v1/generations/", {"page_size": 5})) == newest_first


def test_schema_states_the_cursor_pages(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    for path in ("/api/v1/images/", "/api/v1/generations/"):
        names = {p["name"] for p in schema["paths"][path]["get"]["parameters"]}
        assert {"cursor", "page_size"} <= names and "page" not in names
    assert "page" in {p["name"] for p in schema["paths"]["/api/v1/subjects/"]["get"]["parameters"]}
