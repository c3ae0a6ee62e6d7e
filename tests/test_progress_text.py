"""What the job and run pages say while they work and after: an ETA a person reads (never "about
0 s left", minutes for long runs), "starting…" before a run knows its steps, a cancel notice that
agrees with the final badge, and a count of the images that still exist."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from imagesite.jobs import JobStatus, eta_words
from training.models import Subject, TrainingRun

from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("seconds, words", [
    (0.0, "finishing…"), (0.4, "finishing…"), (1.2, "about 1 s left"), (42.4, "about 42 s left"),
    (59.4, "about 59 s left"), (59.6, "about 1 min left"), (2287, "about 38 min left"), (7200, "about 120 min left"),
])
def test_eta_words(seconds, words):
    assert eta_words(seconds) == words


def _running(owner, step, total, elapsed_s):
    return make_generation(owner, status=JobStatus.RUNNING, steps=total, progress_step=step, progress_total=total,
                           started_at=timezone.now(), first_step_at=timezone.now() - timedelta(seconds=elapsed_s))


def test_last_step_says_finishing_not_zero_seconds(owner, owner_client):
    generation = _running(owner, 20, 20, 10)
    html = owner_client.get(generation.get_absolute_url()).content.decode()
    assert "finishing…" in html and "0 s left" not in html


def test_a_long_job_gives_minutes(owner, owner_client):
    generation = _running(owner, 2, 100, 60)  # 60 s a step, 98 left
    assert "about 98 min left" in owner_client.get(generation.get_absolute_url()).content.decode()


@pytest.fixture
def run(owner):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    return TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, started_at=timezone.now())


def test_a_run_before_its_class_images_says_starting(run, owner_client):
    html = owner_client.get(run.get_absolute_url()).content.decode()
    assert "starting…" in html and "step 0 of 0" not in html and "of 0" not in html


def test_a_training_eta_is_in_minutes(run, owner_client):
    TrainingRun.objects.filter(pk=run.pk).update(phase="training", progress_step=51, progress_total=800,
                                                 first_step_at=timezone.now() - timedelta(seconds=150))
    html = owner_client.get(run.get_absolute_url()).content.decode()
    assert "step 51 of 800" in html and "about 37 min left" in html and " s left" not in html


def test_canceling_a_running_job_agrees_with_the_canceled_badge(owner, owner_client):
    generation = _running(owner, 3, 20, 3)
    response = owner_client.post(reverse("generation-cancel", args=[generation.pk]), follow=True)
    html = response.content.decode()
    assert "Canceling" not in html
    assert "Canceled: the worker stops at its next step." in html and ">Canceled</span>" in html


def test_canceling_a_running_training_run_agrees_with_its_badge(run, owner_client):
    html = owner_client.post(reverse("training-run-cancel", args=[run.pk]), follow=True).content.decode()
    assert "Canceling" not in html and "Canceled: the worker stops at its next step." in html


def test_done_counts_the_images_that_still_exist(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED, num_images=2)
    first, second = make_image(owner, generation), make_image(owner, generation)
    html = owner_client.get(generation.get_absolute_url()).content.decode()
    assert "· 2 images" in html
    second.delete()
    assert "· 1 image\n" in owner_client.get(generation.get_absolute_url()).content.decode()
    first.delete()
    html = owner_client.get(generation.get_absolute_url()).content.decode()
    assert "no images left" in html and "1 image" not in html
