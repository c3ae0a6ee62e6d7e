"""“Generate again with these settings”: from an image, its own seed and one image (AUTOMATIC1111's
reuse-seed); from the job, the job's settings; a deleted subject is named, not silently dropped."""
from __future__ import annotations

from django.urls import reverse

from imagesite.jobs import JobStatus

from .factories import make_generation, make_image


def _four_images(owner):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED, seed=740, num_images=4)
    return generation, [make_image(owner, generation) for _ in range(4)]


def _fix_seeds(images):
    for image in images:
        image.seed = 740 + image.index
        image.save(update_fields=["seed"])


def test_again_from_the_fourth_image_uses_its_seed_and_one_image(owner, owner_client):
    generation, images = _four_images(owner)
    _fix_seeds(images)
    page = owner_client.get(images[3].get_absolute_url()).content.decode()
    link = f"?again={generation.pk}&amp;image={images[3].pk}"
    assert link in page
    form = owner_client.get(reverse("generation-new"), {"again": generation.pk, "image": images[3].pk}).context["form"]
    assert form.initial["seed"] == 743 and form.initial["num_images"] == 1
    assert form.initial["prompt"] == generation.prompt


def test_again_from_the_job_keeps_the_jobs_seed_and_count(owner, owner_client):
    generation, images = _four_images(owner)
    assert f"?again={generation.pk}\"" in owner_client.get(generation.get_absolute_url()).content.decode()
    form = owner_client.get(reverse("generation-new"), {"again": generation.pk}).context["form"]
    assert form.initial["seed"] == 740 and form.initial["num_images"] == 4


def test_an_image_of_another_job_is_ignored(owner, owner_client):
    generation, _ = _four_images(owner)
    stranger = make_image(owner, seed=99)
    form = owner_client.get(reverse("generation-new"), {"again": generation.pk, "image": stranger.pk}).context["form"]
    assert form.initial["seed"] == 740 and form.initial["num_images"] == 4


def test_another_users_image_fills_nothing(owner, other_user, other_client):
    image = make_image(owner, prompt="private prompt")
    response = other_client.get(reverse("generation-new"), {"again": image.generation_id, "image": image.pk})
    assert b"private prompt" not in response.content


def test_a_deleted_subject_is_named_on_the_form(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED, prompt="a sks shape", subject_name="Checker")
    page = owner_client.get(reverse("generation-new"), {"again": generation.pk}).content.decode()
    assert "The subject “Checker” of that generation was deleted" in page
    assert owner_client.get(reverse("generation-new")).content.decode().count("was deleted") == 0


def test_a_kept_subject_says_nothing(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED)
    assert "was deleted" not in owner_client.get(reverse("generation-new"), {"again": generation.pk}).content.decode()


def test_a_prompt_naming_a_subject_without_choosing_it_gets_a_hint_that_attaches_it(owner, owner_client):
    from training.models import Subject, TrainingRun

    subject = Subject.objects.create(owner=owner, name="Rex", token="sks", class_noun="dog")
    TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors")
    form = owner_client.get(reverse("generation-new")).context["form"]
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, "")}
    data.update(prompt="a photo of sks dog on a beach", seed=1)
    page = owner_client.post(reverse("generation-new"), data, follow=True).content.decode()
    assert "Your prompt names “sks”, the token of your subject Rex" in page
    generation = owner.generations.get()
    link = f"{reverse('generation-new')}?again={generation.pk}&amp;subject={subject.pk}"
    assert link in page
    again = owner_client.get(reverse("generation-new"), {"again": generation.pk, "subject": subject.pk})
    assert again.context["form"].initial["subject"] == subject
    owner_client.post(reverse("generation-new"), {**data, "prompt": "a red circle"}, follow=True)
    assert "the token of your subject" not in owner_client.get(reverse("generation-new")).content.decode()
