"""The generate form: each bad value gets its own error and nothing is queued."""
from __future__ import annotations

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from generation.models import Generation
from generation.rules import current_model

pytestmark = pytest.mark.django_db


def valid_data(**overrides):
    info = current_model()
    data = dict(prompt="a red circle on a blue background", negative_prompt="", seed="", steps=info.steps,
                guidance_scale=info.guidance_scale, width=info.width, height=info.height,
                scheduler=info.scheduler, num_images=1)
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    "field, value",
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 2001),
        ("seed", "-1"),
        ("seed", str(2**32)),
        ("seed", "abc"),
        ("steps", "0"),
        ("steps", "151"),
        ("guidance_scale", "-1"),
        ("guidance_scale", "31"),
        ("width", "65"),
        ("width", "8"),
        ("width", "4096"),
        ("height", "60"),
        ("scheduler", "nope"),
        ("num_images", "0"),
        ("num_images", "5"),
    ],
)
def test_bad_value_gets_its_field_error_and_nothing_is_queued(owner_client, field, value, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("generation-new"), valid_data(**{field: value}))
    assert response.status_code == 400  # the form again, with its errors (as the training pages answer)
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert not Generation.objects.exists()
    assert OrmQ.objects.count() == 0


def test_valid_post_creates_and_queues_after_commit(owner, owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = owner_client.post(reverse("generation-new"), valid_data(seed="42", num_images=2))
    generation = Generation.objects.get()
    assert response["Location"] == f"/?job={generation.pk}#job"  # back to the Generate page, with the job
    assert generation.owner == owner and generation.seed == 42 and generation.status == "queued"
    assert len(callbacks) == 1 and OrmQ.objects.count() == 1


def test_blank_seed_becomes_a_recorded_random_seed(owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("generation-new"), valid_data())
        owner_client.post(reverse("generation-new"), valid_data())
    seeds = list(Generation.objects.values_list("seed", flat=True))
    assert len(seeds) == 2 and all(0 <= s < 2**32 for s in seeds) and seeds[0] != seeds[1]


def test_defaults_follow_the_loaded_model(owner_client):
    info = current_model()
    form = owner_client.get(reverse("generation-new")).context["form"]
    assert form["width"].value() == info.width and form["steps"].value() == info.steps
    assert form["scheduler"].value() == info.scheduler == "dpmpp_2m"
