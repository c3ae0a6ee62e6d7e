"""The job row is the queue, on a real cluster (ORM broker, the file test database, the demo model):
a heavy user's backlog does not hold up others, and compatible jobs share one pipeline call."""
from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django_q.models import Task
from PIL import Image

from generation.models import Generation
from generation.services import create_generation
from imagesite.jobs import JobStatus

from .concurrency_support import set_limits
from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

FAST = dict(negative_prompt="", steps=4, guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m", num_images=1)


def _users(*names):
    return [get_user_model().objects.create_user(name, password="pw-long-enough") for name in names]


def _all_done(jobs) -> bool:
    return all(Generation.objects.get(pk=job.pk).status in (JobStatus.SUCCEEDED, JobStatus.CANCELED) for job in jobs)


def test_two_light_users_run_within_the_next_two_jobs_of_a_heavy_users_backlog(spawn_worker):
    heavy, light1, light2 = _users("heavy", "light1", "light2")
    set_limits(heavy, max_queued_jobs=20)
    spawn_worker(IMAGESITE_MAX_BATCH="1")  # one job per call: the order is the scheduler's alone
    backlog = [create_generation(owner=heavy, prompt=f"a red circle {i}", seed=i, **FAST) for i in range(20)]
    wait_for(lambda: Generation.objects.filter(owner=heavy).exclude(status=JobStatus.QUEUED).exists(), 120, message="the first job")
    light = [create_generation(owner=user, prompt="a yellow star", seed=1, **FAST) for user in (light1, light2)]
    wait_for(lambda: _all_done(light), 180, message="the light users' jobs")
    started = [job.started_at for job in Generation.objects.filter(pk__in=[j.pk for j in light])]
    heavy_before = Generation.objects.filter(owner=heavy, started_at__lt=max(started)).count()
    running_when_they_came = 2  # at most the one running and the one its worker had claimed next
    assert heavy_before <= running_when_they_came, heavy_before
    wait_for(lambda: _all_done(backlog), 240, message="the backlog")


def test_four_compatible_jobs_share_one_call_and_match_their_solo_images(spawn_worker):
    alice, bob = _users("alice", "bob")
    solo = create_generation(owner=alice, prompt="a green square", seed=31, **FAST)
    # Queued before the worker starts, so its first claim sees them all: four compatible, one not.
    batch = [create_generation(owner=user, prompt=f"a red circle on a blue background {i}", seed=40 + i, **FAST)
             for i, user in enumerate((alice, bob, alice, bob))]
    odd = create_generation(owner=bob, prompt="a white heart", seed=9, **{**FAST, "steps": 5})
    spawn_worker(IMAGESITE_MAX_BATCH="4")
    wait_for(lambda: _all_done([solo, *batch, odd]), 240, message="every job")
    # Fair order: solo (alice), batch[1] (bob), batch[0] (alice), batch[3] (bob) in the first claim,
    # one pipeline call of the four (all the same settings; the task's result lists each job).
    results = [r for r in Task.objects.values_list("result", flat=True) if r]
    together = [r for r in results if r.count("succeeded") == 4]
    assert len(together) == 1 and max(r.count("succeeded") for r in results) == 4, results
    assert all(f"generation {job.pk} succeeded" in together[0] for job in (solo, batch[1], batch[0], batch[3])), together
    assert not any(f"generation {odd.pk} " in r for r in results)  # other steps: never in a batch (a lone job's result names none)
    # Each image equals its job rendered alone with its seed, within one level.
    from django.conf import settings

    from generation.pipeline import Renderer

    renderer = Renderer(settings.IMAGESITE_MODEL, "cpu")
    for job in batch:
        stored = Image.open(Generation.objects.get(pk=job.pk).images.get().file.path).convert("RGB")
        alone = renderer.render(Generation.objects.get(pk=job.pk).render_settings())[0]
        difference = np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(alone, dtype=np.int16)).max()
        assert difference <= 1, (job.pk, difference)
