"""Several jobs in one pipeline call (generation.batching) on the shipped demo model: every image is its
solo render's within one level, a job canceled mid-batch drops out while the others finish."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
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


GB = 10**9


def test_the_memory_plan_bounds_the_images_a_call_holds():
    """generation.memory.max_batch_images with plain numbers: what a card of that size holds."""
    from generation.families import FAMILIES
    from generation.memory import max_batch_images

    sd1, xl = FAMILIES["sd1"], FAMILIES["sdxl"]
    assert max_batch_images("cpu", sd1, 512, 512) is None  # host memory: IMAGESITE_MAX_BATCH alone
    assert max_batch_images("low", xl, 512, 512, free_bytes=80 * GB) == 1  # sequential offload: one at a time
    assert [max_batch_images("full", xl, 1024, 1024, free_bytes=int(free * GB)) for free in (11.5, 15.5, 23)] == [1, 2, 5]
    assert max_batch_images("medium", xl, 1024, 1024, free_bytes=int(9.5 * GB)) == 2
    assert max_batch_images("medium", xl, 1024, 1024, free_bytes=int(7.5 * GB)) == 1
    assert max_batch_images("full", sd1, 512, 512, free_bytes=int(7.5 * GB)) == 3
    assert max_batch_images("full", sd1, 1024, 1024, free_bytes=int(7.5 * GB)) == 1  # 4× the pixels
    assert max_batch_images("full", sd1, 256, 256, free_bytes=int(7.5 * GB)) == 12
    assert max_batch_images("full", xl, 1024, 1024, free_bytes=GB) == 1  # never below one: the plan was made for it


@pytest.mark.django_db
def test_the_worker_claims_no_more_images_than_its_memory_plan_holds(settings, monkeypatch):
    """The worker's claim (generation.tasks.images_per_call) on a pretended GPU: worker_device and
    torch.cuda's memory figures are patched (no GPU here); the rows and the claim are real."""
    import torch

    from generation import pipeline, tasks
    from generation.models import Generation
    from imagesite.queue import claim_batch

    owner = get_user_model().objects.create_user("alice", password="pw-long-enough")
    settings.IMAGESITE_MAX_BATCH = 4
    assert tasks.images_per_call(make_generation(owner)) == 4  # the CPU: IMAGESITE_MAX_BATCH
    Generation.objects.all().delete()
    jobs = [make_generation(owner, seed=i, width=512, height=512) for i in range(4)]
    monkeypatch.setattr(pipeline, "worker_device", lambda: "cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(3.6 * GB), 16 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    # The demo model's weights are a few MB; SD 1.x activations 1.36 GB an image at 512²: two fit in 3.6 GB.
    settings.IMAGESITE_VRAM = "full"
    claimed = claim_batch(Generation, batch_key, max_jobs=4, size=lambda job: job.num_images, max_size=tasks.images_per_call)
    assert [job.pk for job in claimed] == [job.pk for job in jobs[:2]]
    settings.IMAGESITE_VRAM = "low"
    claimed = claim_batch(Generation, batch_key, max_jobs=4, size=lambda job: job.num_images, max_size=tasks.images_per_call)
    assert [job.pk for job in claimed] == [jobs[2].pk]


@pytest.mark.django_db(transaction=True)
def test_through_the_task_a_canceled_job_and_a_failed_one_leave_the_rest_of_the_batch_to_finish(renderer, settings, monkeypatch):
    """The real task in this process (generation.tasks.run_generation, the shipped demo model): four
    compatible jobs claimed as one batch. The second is canceled as the page and the API do
    (`job.cancel()` on its row) when it reports step 2: its worker notices within a step or so and it
    ends canceled with no images. Storing the fourth's images fails (injected: a full disk cannot be
    made here): it fails with its own message. The other two are stored as if rendered alone."""
    from generation import tasks
    from generation.models import Generation
    from imagesite.jobs import JobStatus

    settings.IMAGESITE_MAX_BATCH, settings.IMAGESITE_PREVIEW_S, settings.IMAGESITE_CPU_THREADS = 4, 0, 1
    alice, bob = (get_user_model().objects.create_user(name, password="pw-long-enough") for name in ("alice", "bob"))
    jobs = [make_generation(owner, prompt=f"a red circle {i}", seed=20 + i, steps=20) for i, owner in enumerate((alice, bob, alice, bob))]
    canceled, failing = jobs[1], jobs[3]  # fair order: alice, bob, alice, bob
    seen: list[int] = []
    real_on_step, real_store = tasks._on_step, tasks.store_images

    def on_step(job):
        report = real_on_step(job)

        def step(number: int, total: int) -> None:
            if job.pk == canceled.pk:
                seen.append(number)
                if number == 2:
                    Generation.objects.get(pk=job.pk).cancel()
            report(number, total)

        return step

    def store_images(job, *args, **kwargs):
        if job.pk == failing.pk:
            raise OSError("No space left on device")
        return real_store(job, *args, **kwargs)

    monkeypatch.setattr(tasks, "_on_step", on_step)
    monkeypatch.setattr(tasks, "store_images", store_images)
    outcome = tasks.run_generation(jobs[0].pk)
    assert outcome == ", ".join(f"generation {job.pk} {ending}" for job, ending in
                                zip(jobs, ("succeeded", "canceled", "succeeded", "failed"))), outcome
    rows = {row.pk: row for row in Generation.objects.filter(pk__in=[job.pk for job in jobs])}
    assert rows[canceled.pk].status == JobStatus.CANCELED and not rows[canceled.pk].images.exists()
    assert 2 <= max(seen) < 20  # it stopped mid-batch, not at the end
    assert rows[failing.pk].status == JobStatus.FAILED and "No space left on device" in rows[failing.pk].error
    assert not rows[failing.pk].images.exists()
    for job in (jobs[0], jobs[2]):
        assert rows[job.pk].status == JobStatus.SUCCEEDED
        with rows[job.pk].images.get().file.open("rb") as handle:
            stored = Image.open(handle).convert("RGB")
        assert max_difference(stored, renderer.render(rows[job.pk].render_settings())[0]) <= 1
