"""Several jobs in one pipeline call (generation.batching) on the shipped demo model: every image is its
solo render's within one level, a job canceled mid-batch drops out while the others finish."""
from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from generation.batching import BatchItem, batch_key, render_batch
from generation.pipeline import Renderer, RenderSettings
from imagesite.jobs import JobCanceled

from .factories import make_generation
from .torch_support import one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(settings.IMAGESITE_MODEL, "cpu")


def job(prompt: str, seed: int, num_images: int = 1, negative: str = "") -> RenderSettings:
    return RenderSettings(prompt=prompt, negative_prompt=negative, seed=seed, steps=4, guidance_scale=7.5,
                          width=64, height=64, scheduler="dpmpp_2m", num_images=num_images)


def max_difference(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_a_batch_gives_each_job_its_solo_images(renderer):
    jobs = [job("a red circle on a blue background", 5), job("a yellow star on a green background", 90, num_images=2, negative="blurry"),
            job("a white heart on a black background", 7)]
    solo = [renderer.render(s) for s in jobs]
    steps: list[list[tuple[int, int]]] = [[] for _ in jobs]
    items = [BatchItem(s, on_step=lambda step, total, i=i: steps[i].append((step, total))) for i, s in enumerate(jobs)]
    batched = render_batch(renderer, items)
    assert [len(images) for images in batched] == [1, 2, 1]
    differences = [max_difference(a, b) for alone, together in zip(solo, batched) for a, b in zip(alone, together)]
    assert max(differences) <= 1, differences  # batched matrix products may differ in the last bit
    assert all(progress == [(1, 4), (2, 4), (3, 4), (4, 4)] for progress in steps)  # each job its own progress


def test_a_job_canceled_mid_batch_drops_out_and_the_others_finish(renderer):
    jobs = [job("a red circle on a blue background", 5), job("a yellow star on a green background", 6), job("a green square", 8)]
    solo = renderer.render(jobs[2])

    def cancel_at_two(step: int, total: int) -> None:
        if step == 2:
            raise JobCanceled()

    batched = render_batch(renderer, [BatchItem(jobs[0]), BatchItem(jobs[1], on_step=cancel_at_two), BatchItem(jobs[2])])
    assert isinstance(batched[1], JobCanceled)
    assert len(batched[0]) == 1 and max_difference(batched[2][0], solo[0]) <= 1


def test_prompts_of_different_lengths_share_the_batch_in_separate_calls(renderer):
    long_prompt = ", ".join(["a red circle on a blue background"] * 12)  # over 75 tokens: two chunks
    jobs = [job(long_prompt, 3), job("a yellow star", 4)]
    batched = render_batch(renderer, [BatchItem(s) for s in jobs])
    for s, images in zip(jobs, batched):
        assert max_difference(images[0], renderer.render(s)[0]) <= 1


@pytest.mark.django_db
def test_only_plain_jobs_with_equal_settings_share_a_key():
    owner = get_user_model().objects.create_user("alice", password="pw-long-enough")
    plain = make_generation(owner, prompt="one", seed=1)
    assert batch_key(plain) == batch_key(make_generation(owner, prompt="two", seed=99, num_images=3, negative_prompt="x"))
    assert batch_key(plain) != batch_key(make_generation(owner, steps=9))
    assert batch_key(plain) != batch_key(make_generation(owner, loras=[{"name": "ink", "weight": 1}]))
    assert batch_key(make_generation(owner, hires_scale=2.0)) is None
    assert batch_key(make_generation(owner, init_image="inputs/1/x.upload")) is None
