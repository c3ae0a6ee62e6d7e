"""Training runs' validation images are marked, and the gallery and the API list filter by training
samples, subject, base model and date range (generation.services.filter_images for both)."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

import pytest
from django.urls import reverse

from generation.models import BaseModel, GeneratedImage
from imagesite.jobs import JobStatus
from training.models import Subject, TrainingRun

from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(owner):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED)
    demo = BaseModel.objects.create(name="demo-a", path="/models/a")
    other_base = BaseModel.objects.create(name="demo-b", path="/models/b")
    rows = {
        "plain": make_image(owner, prompt="a plain red circle", base_model=demo),
        "sample": make_image(owner, prompt="a sks shape (training step 100)", subject=subject, subject_name="Checkers", training_run=run, base_model=demo),
        "with_subject": make_image(owner, prompt="a photo of sks shape", subject=subject, subject_name="Checkers", base_model=other_base),
        "old": make_image(owner, prompt="an old blue square", base_model=other_base),
    }
    GeneratedImage.objects.filter(pk=rows["old"].pk).update(created_at=datetime(2024, 3, 9, 23, 30, tzinfo=dt_timezone.utc))
    GeneratedImage.objects.filter(pk=rows["plain"].pk).update(created_at=datetime(2024, 3, 10, 0, 10, tzinfo=dt_timezone.utc))
    return {"the_subject": subject, "run": run, "demo": demo, "other_base": other_base, **rows}


def gallery_ids(client, **params) -> set[int]:
    response = client.get(reverse("gallery"), params)
    assert response.status_code == 200
    return {image.pk for image in response.context["page"].object_list}


def api_ids(client, **params) -> set[int]:
    response = client.get("/api/v1/images/", params)
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def ids(world, *names) -> set[int]:
    return {world[name].pk for name in names}


def test_training_samples_are_hidden_by_default_and_shown_on_request(world, owner_client):
    assert gallery_ids(owner_client) == ids(world, "plain", "with_subject", "old")
    assert gallery_ids(owner_client, training="on") == ids(world, "plain", "sample", "with_subject", "old")


def test_a_sample_carries_a_badge_on_its_tile_and_page(world, owner_client):
    html = owner_client.get(reverse("gallery"), {"training": "on"}).content.decode()
    assert html.count(">training sample</span>") == 1
    page = owner_client.get(world["sample"].get_absolute_url()).content.decode()
    assert ">training sample</span>" in page and world["run"].get_absolute_url() in page
    assert ">training sample</span>" not in owner_client.get(world["plain"].get_absolute_url()).content.decode()


def test_the_gallery_filters_by_subject_model_and_days(world, owner_client):
    assert gallery_ids(owner_client, subject=world["the_subject"].pk, training="on") == ids(world, "sample", "with_subject")
    assert gallery_ids(owner_client, base_model=world["other_base"].pk) == ids(world, "with_subject", "old")
    assert gallery_ids(owner_client, created_from="2024-03-09", created_to="2024-03-09") == ids(world, "old")
    assert gallery_ids(owner_client, created_from="2024-03-10", created_to="2024-03-10") == ids(world, "plain")
    assert gallery_ids(owner_client, created_to="2024-03-10") == ids(world, "plain", "old")
    assert gallery_ids(owner_client, q="sks", base_model=world["demo"].pk, training="on") == ids(world, "sample")


def test_the_gallery_offers_only_the_users_own_subjects_and_models(world, owner_client, other_user):
    Subject.objects.create(owner=other_user, name="Secret", token="zwx", class_noun="dog")
    html = owner_client.get(reverse("gallery")).content.decode()
    assert "Checkers" in html and "demo-b" in html and "Secret" not in html
    # another user's subject id is no choice: shown as an error, nothing filtered by it
    other = Subject.objects.get(name="Secret")
    response = owner_client.get(reverse("gallery"), {"subject": other.pk})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()


def test_bad_dates_are_said_and_ignored(world, owner_client):
    response = owner_client.get(reverse("gallery"), {"created_from": "2024-03-11", "created_to": "2024-03-09"})
    assert "The end comes before the start." in response.content.decode()
    assert "The end comes before the start." not in owner_client.get(reverse("gallery")).content.decode()


def test_page_links_keep_the_filters(world, owner, owner_client):
    for _ in range(30):
        make_image(owner, prompt="many red circles", base_model=world["demo"])
    first = owner_client.get(reverse("gallery"), {"q": "red", "base_model": world["demo"].pk})
    assert f"?q=red&amp;base_model={world['demo'].pk}&amp;older=" in first.content.decode()
    second = owner_client.get(reverse("gallery") + first.context["page"].older_url)
    assert len(first.context["page"].object_list) == 24 and len(second.context["page"].object_list) == 7  # 30 + "plain"


def test_api_list_marks_samples_and_filters_alike(world, owner_client):
    rows = {row["id"]: row for row in owner_client.get("/api/v1/images/").json()["results"]}
    assert rows[world["sample"].pk]["training_run"] == world["run"].pk and rows[world["plain"].pk]["training_run"] is None
    assert rows[world["with_subject"].pk]["base_model"] == world["other_base"].pk
    assert api_ids(owner_client) == ids(world, "plain", "sample", "with_subject", "old")  # the API keeps every image by default
    assert api_ids(owner_client, training_sample="false") == ids(world, "plain", "with_subject", "old")
    assert api_ids(owner_client, training_sample="true") == ids(world, "sample")
    assert api_ids(owner_client, subject=world["the_subject"].pk) == ids(world, "sample", "with_subject")
    assert api_ids(owner_client, base_model=world["demo"].pk) == ids(world, "plain", "sample")
    assert api_ids(owner_client, created_from="2024-03-10", created_to="2024-03-10") == ids(world, "plain")
    assert api_ids(owner_client, created_from="2024-03-11", created_to="2024-03-09") == set()
    assert api_ids(owner_client, created_to="9999-12-31", created_from="0001-01-01") == ids(world, "plain", "sample", "with_subject", "old")


@pytest.mark.parametrize("params, field", [
    ({"subject": "x"}, "subject"), ({"base_model": "0"}, "base_model"), ({"created_from": "2024-3-1"}, "created_from"),
    ({"created_to": "2024-02-30"}, "created_to"), ({"training_sample": "maybe"}, "training_sample"),
])
def test_api_bad_filters_are_400_on_the_field(world, owner_client, params, field):
    response = owner_client.get("/api/v1/images/", params)
    assert response.status_code == 400 and field in response.content.decode()


def test_api_filter_by_another_users_subject_finds_nothing(world, other_client):
    assert api_ids(other_client, subject=world["the_subject"].pk) == set()


def test_the_schema_documents_the_filters(client):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    text = schema.content.decode()
    for name in ("training_sample", "created_from", "created_to", "base_model"):
        assert f'"{name}"' in text or f"name: {name}" in text
