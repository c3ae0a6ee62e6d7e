"""Several queued jobs in one pipeline call (issue 17: compatible jobs share a batch).

Jobs with the same base model, size, steps, sampler, guidance and adapters (no subject or the same
subject; the same prompt LoRAs and embeddings) differ only in their prompts, seeds and image counts,
so one call can denoise all their images together: each job's prompts are encoded on their own
(A1111 syntax, generation.prompt_embeds) and stacked, each image keeps its own CPU generator
(seed + i), so every image is its solo render's up to the last bit of the batched matrix products
(measured: within one level of 255, see tests/test_batching.py). Progress, previews, cancel and
failure stay per job: a job canceled mid-batch is dropped from the results while the others go on.
A call holds at most IMAGESITE_MAX_BATCH images, fewer where the worker's memory plan holds fewer at
the jobs' size (generation.memory.max_batch_images, applied by generation.tasks.images_per_call);
out of GPU memory anyway, the jobs render one by one.

`batch_key(job)` is torch-free (the claim in imagesite.queue calls it); `render_batch` runs in the
worker on its warm Renderer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

# One call holds at most this many images unless IMAGESITE_MAX_BATCH says otherwise (bench/batching.py),
# and no more than the memory plan holds (generation.memory.max_batch_images).
DEFAULT_MAX_BATCH = 4


def batch_key(job) -> tuple | None:
    """What must be equal for two generations to share a pipeline call; None: this job runs alone
    (an input image, a mask or a hires pass give each job its own passes)."""
    if job.init_image or job.mask or job.hires_scale > 1:
        return None
    return (job.base_model_id, job.width, job.height, job.steps, job.scheduler, job.guidance_scale, job.subject_id,
            json.dumps(job.loras, sort_keys=True), json.dumps(job.embeddings, sort_keys=True))


@dataclass
class BatchItem:
    """One job of a batch: its settings (RenderSettings), its progress callback (may raise to cancel
    that job) and its live-preview tap (or None)."""

    settings: Any
    on_step: Callable[[int, int], None] | None = None
    preview: Any = None


class BatchAborted(Exception):
    """Every job of the batch was canceled or stopped: the call ended early."""


def render_batch(renderer, items: list[BatchItem], adapter=None) -> list[Any]:
    """Render `items` (equal batch keys) on the renderer's warm pipeline; returns, per item, its list
    of images or the exception that ended that job (its on_step's cancel, for one). Items whose
    prompts encode to different lengths (more 75-token chunks) go in separate calls. Raises what a
    whole call raises (out of memory: the caller renders the jobs one by one)."""
    import torch

    from .prompt_embeds import encode_prompt

    first = items[0].settings
    results: list[Any] = [None] * len(items)
    with renderer.lock:
        renderer._set_scheduler(first.scheduler)
        with renderer.adapters.applied(adapter) as rewrite:
            encoded = []
            for item in items:
                s = item.settings
                s = replace(s, prompt=rewrite(s.prompt), negative_prompt=rewrite(s.negative_prompt))
                encoded.append(encode_prompt(renderer.pipe, s.prompt, s.negative_prompt or None, s.num_images))
            groups: dict[tuple, list[int]] = {}
            for index, embeds in enumerate(encoded):
                groups.setdefault(tuple(embeds["prompt_embeds"].shape[1:]), []).append(index)
            for indexes in groups.values():
                stacked = {key: torch.cat([encoded[i][key] for i in indexes]) for key in encoded[indexes[0]]}
                for i, images in zip(indexes, _one_call(renderer, [items[i] for i in indexes], stacked)):
                    results[i] = images
    return results


def _one_call(renderer, items: list[BatchItem], embeds: dict) -> list[Any]:
    import torch

    from .pipeline_modes import blank_conditioning
    from .previews import estimate_x0

    s = items[0].settings
    seeds = [seed for item in items for seed in item.settings.seeds]
    slices, start = [], 0
    for item in items:
        slices.append(slice(start, start + item.settings.num_images))
        start += item.settings.num_images
    ended: dict[int, BaseException] = {}
    pipe = renderer.pipe
    x0: dict[str, Any] = {"value": None}
    if any(item.preview is not None for item in items):
        _keep_x0(pipe.scheduler, x0, estimate_x0)

    def step_end(pipe, step: int, timestep, kwargs: dict) -> dict:
        latents = kwargs.get("latents")
        for index, item in enumerate(items):
            if index in ended:
                continue
            try:
                if item.on_step is not None:
                    item.on_step(step + 1, pipe.num_timesteps)
            except Exception as exc:  # noqa: BLE001 - this job ends (canceled, stopped); the others go on
                ended[index] = exc
                continue
            if item.preview is not None:
                estimate = x0["value"]
                item.preview.x0 = estimate[slices[index]] if estimate is not None else None
                item.preview.step_end(step + 1, pipe.num_timesteps, latents[slices[index]] if latents is not None else None)
        if len(ended) == len(items):
            raise BatchAborted()
        return kwargs

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    # An inpainting checkpoint draws text-to-image from a grey image under a full mask (A1111's way).
    blank = blank_conditioning((s.width, s.height)) if renderer.modes.inpainting_model else {}
    try:
        output = pipe(**embeds, **blank, guidance_scale=s.guidance_scale, num_images_per_prompt=1, generator=generators,
                      width=s.width, height=s.height, num_inference_steps=s.steps, callback_on_step_end=step_end)
    except BatchAborted:
        return [ended[i] for i in range(len(items))]
    images = list(output.images)
    return [ended.get(index) or images[slices[index]] for index in range(len(items))]


def _keep_x0(scheduler, holder: dict, estimate_x0) -> None:
    """Wrap the batch's scheduler step to keep the whole batch's x0 estimate (each job's preview
    shows its own slice), as previews.PreviewTap.attach does for a single job."""
    import functools

    original = scheduler.step

    @functools.wraps(original)
    def step(model_output, timestep, sample, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        try:
            holder["value"] = estimate_x0(scheduler, output, model_output, timestep, sample)
        except Exception:  # noqa: BLE001 - a preview must never stop a job
            holder["value"] = None
        return output if return_dict else (output.prev_sample,)

    scheduler.step = step
