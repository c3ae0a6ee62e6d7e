"""The admin as an operator sees it: job rows (generations, training runs) are read and deleted,
never edited or made by hand; the index reads as English."""
from __future__ import annotations

import os

import pytest
from django.urls import reverse

from generation.models import Generation
from imagesite.jobs import JobStatus
from training.models import Subject, TrainingRun

from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("operator", password="x-long-enough-passphrase"))
    return client


@pytest.fixture
def run(owner):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    return TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, progress_step=3, progress_total=10)


def test_the_index_offers_no_add_for_jobs(staff_client):
    html = staff_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:generation_generation_add") not in html
    assert reverse("admin:training_trainingrun_add") not in html
    assert reverse("admin:training_subject_add") in html  # other models keep theirs
    assert staff_client.get(reverse("admin:generation_generation_add")).status_code == 403
    assert staff_client.get(reverse("admin:training_trainingrun_add")).status_code == 403


def test_a_generation_change_form_is_read_only(staff_client, owner, other_user):
    generation = make_generation(owner, status=JobStatus.QUEUED)
    url = reverse("admin:generation_generation_change", args=[generation.pk])
    html = staff_client.get(url).content.decode()
    for field in ("status", "prompt", "owner", "progress_step", "seed"):
        assert f'name="{field}"' not in html, field
    assert "a red circle on a blue background" in html  # shown, as text
    staff_client.post(url, {"status": JobStatus.SUCCEEDED, "prompt": "changed", "owner": other_user.pk, "progress_step": 4})
    generation.refresh_from_db()
    assert (generation.status, generation.prompt, generation.owner, generation.progress_step) == (JobStatus.QUEUED, "a red circle on a blue background", owner, 0)


def test_a_training_run_change_form_is_read_only(staff_client, run):
    url = reverse("admin:training_trainingrun_change", args=[run.pk])
    html = staff_client.get(url).content.decode()
    for field in ("status", "progress_step", "progress_total", "subject", "options"):
        assert f'name="{field}"' not in html, field
    staff_client.post(url, {"status": JobStatus.SUCCEEDED, "progress_step": 10})
    run.refresh_from_db()
    assert (run.status, run.progress_step) == (JobStatus.RUNNING, 3)


def test_staff_can_still_delete_a_generation_with_its_files(staff_client, owner, django_capture_on_commit_callbacks):
    image = make_image(owner)
    paths = [image.file.path, image.thumbnail.path]
    url = reverse("admin:generation_generation_delete", args=[image.generation.pk])
    assert "Delete" in staff_client.get(reverse("admin:generation_generation_change", args=[image.generation.pk])).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert staff_client.post(url, {"post": "yes"}).status_code == 302
    assert not Generation.objects.exists()
    assert not any(os.path.exists(p) for p in paths)


def test_staff_can_delete_a_training_run(staff_client, run):
    assert staff_client.post(reverse("admin:training_trainingrun_delete", args=[run.pk]), {"post": "yes"}).status_code == 302
    assert not TrainingRun.objects.exists()


def test_inlines_add_no_images_or_photos(staff_client, owner, run):
    image = make_image(owner)
    for url in (reverse("admin:generation_generation_change", args=[image.generation.pk]), reverse("admin:training_subject_change", args=[run.subject.pk])):
        [inline] = staff_client.get(url).context["inline_admin_formsets"]
        assert not inline.has_add_permission, url


def test_the_index_names_webhook_settings_once(staff_client):
    assert "settingss" not in staff_client.get(reverse("admin:index")).content.decode()


def test_staff_cancel_requeue_and_retry_jobs_and_pause_the_queue(staff_client, owner):
    """The job admins' actions call the jobs' own state changes; resuming the queue wakes workers."""
    from django_q.models import OrmQ

    from imagesite.models import QueueControl

    client = staff_client
    queued = make_generation(owner)
    running = make_generation(owner, status=JobStatus.RUNNING)
    failed = make_generation(owner, status=JobStatus.FAILED, error="boom", attempts=2)
    url = reverse("admin:generation_generation_changelist")
    for action, pk in (("cancel_jobs", queued.pk), ("requeue_jobs", running.pk), ("retry_jobs", failed.pk)):
        assert client.post(url, {"action": action, "_selected_action": [pk]}).status_code == 302
    statuses = dict(Generation.objects.values_list("pk", "status"))
    assert statuses == {queued.pk: JobStatus.CANCELED, running.pk: JobStatus.QUEUED, failed.pk: JobStatus.QUEUED}
    assert Generation.objects.get(pk=failed.pk).error == ""
    assert client.get(reverse("admin:imagesite_queuecontrol_changelist")).status_code == 200
    change = reverse("admin:imagesite_queuecontrol_change", args=[1])
    client.post(change, {"paused": "on", "reason": "Driver update"})
    assert QueueControl.current().paused
    before = OrmQ.objects.count()
    client.post(change, {"reason": ""})
    assert not QueueControl.current().paused and OrmQ.objects.count() == before + 2  # one wake per queued job


def test_the_user_list_shows_each_users_gpu_time_and_active_jobs(staff_client, owner):
    make_generation(owner, status=JobStatus.SUCCEEDED, gpu_seconds=12.2)
    make_generation(owner)
    page = staff_client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert "GPU-seconds, 24 h" in page and '<td class="field-gpu_seconds_last_day">12</td>' in page
    assert '<td class="field-active_jobs">1</td>' in page
