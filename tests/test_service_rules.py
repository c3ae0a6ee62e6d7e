"""The services judge every rule themselves (issue 14, "one way in"): a caller that skips the form and
the serializer still meets the class-noun, token and training-option rules, and the page and the API
show the service's own words for them."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from training import services
from training.forms import TrainingForm
from training.models import Subject, TrainingRun

from .api_support import assert_error, owner_api  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

NEEDS_CLASS_IMAGES = "Prior preservation needs at least one class image."
BAD_CLASS_NOUN = 'Say what the subject is in a word or two, e.g. "person", "dog", "shape".'


@pytest.fixture
def subject(owner) -> Subject:
    return Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")


def test_create_subject_judges_the_class_noun_and_the_token_itself(owner):
    with pytest.raises(ValidationError) as refused:
        services.create_subject(owner=owner, name="Rex", class_noun="dog 2", token="dog")
    errors = refused.value.message_dict
    assert errors["class_noun"] == [BAD_CLASS_NOUN]
    assert "ordinary word" in errors["token"][0]
    with pytest.raises(ValidationError) as refused:
        services.create_subject(owner=owner, name="  ", class_noun="dog")
    assert set(refused.value.message_dict) == {"name"}
    assert not Subject.objects.exists()
    made = services.create_subject(owner=owner, name=" Rex ", class_noun="  Big   Dog ", token="OHWX")
    assert (made.name, made.class_noun, made.token) == ("Rex", "big dog", "ohwx")


def test_create_subject_gives_every_refusal_at_once(owner, subject):
    with pytest.raises(ValidationError) as refused:
        services.create_subject(owner=owner, name="checkers", class_noun="", token="sks")
    assert set(refused.value.message_dict) == {"name", "class_noun", "token"}


def test_start_training_judges_the_options_itself(subject):
    for method, options, field in [("lora", {"steps": 0}, "steps"), ("lora", {"learning_rate": True}, "learning_rate"),
                                   ("magic", {}, "method"), ("lora", {"prior_preservation": True, "num_class_images": 0}, "num_class_images"),
                                   ("lora", {"resolution": 4096}, "resolution")]:
        with pytest.raises(ValidationError) as refused:
            services.start_training(subject=subject, method=method, options=options)
        assert field in refused.value.message_dict, (options, refused.value)
    assert not TrainingRun.objects.exists()


def test_start_training_stores_only_the_cleaned_choices(subject):
    # None means "not chosen": the worker decides it, so it is not stored.
    for i in range(3):
        subject.photos.create(original_name=f"{i}.jpg", status="ready", width=64, height=64, content_sha256=str(i) * 64)
    run = services.start_training(subject=subject, options={"steps": 7, "seed": None})
    assert run.options == {"steps": 7}


def test_the_page_and_the_api_show_the_services_words(owner_client, owner_api, subject):
    page = {name: field.initial for name, field in TrainingForm().fields.items() if field.initial not in (None, False)}
    response = owner_client.post(f"/subjects/{subject.pk}/train/", {**page, "prior_preservation": "on", "num_class_images": 0})
    assert response.status_code == 400
    assert response.context["training_form"].errors["num_class_images"] == [NEEDS_CLASS_IMAGES]
    body = assert_error(owner_api.post(f"/api/v1/subjects/{subject.pk}/train/", {"prior_preservation": True, "num_class_images": 0}, format="json"),
                        400, "num_class_images")
    assert body["errors"]["num_class_images"] == [NEEDS_CLASS_IMAGES]

    response = owner_client.post("/subjects/", {"name": "Rex", "class_noun": "dog 2", "token": "ohwx"})
    assert response.context["form"].errors["class_noun"] == [BAD_CLASS_NOUN]
    body = assert_error(owner_api.post("/api/v1/subjects/", {"name": "Rex", "class_noun": "dog 2", "token": "ohwx"}, format="json"), 400, "class_noun")
    assert body["errors"]["class_noun"] == [BAD_CLASS_NOUN]

    # A name taken: the service's conflict, on the field on the page, a 409 in the API.
    response = owner_client.post("/subjects/", {"name": "checkers", "class_noun": "dog", "token": "ohwx"})
    taken = response.context["form"].errors["name"]
    assert taken == ["You already have a subject with this name."]
    body = assert_error(owner_api.post("/api/v1/subjects/", {"name": "checkers", "class_noun": "dog", "token": "ohwx"}, format="json"), 409, "name")
    assert body["errors"]["name"] == taken
    assert Subject.objects.count() == 1 and not TrainingRun.objects.exists()
