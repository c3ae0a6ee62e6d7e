"""img2img, inpainting and hires fix: a generation job's time ÷ the bare diffusers pipeline call with the
same settings, on the demo model, measured in one run.

    .venv/bin/python bench/studio_modes.py [--runs 7] [--warmup 1] [--threads 1] [--steps N] [--modes img2img,inpaint,...]

Sets itself up: a throwaway SQLite file and media folder under build/bench-studio/, migrated here.

- job: the real task (`generation.tasks.run_generation`) in this process on the warm renderer: claim,
  heartbeat, reading, decoding and cleaning the stored input (the raw upload replaced by a clean PNG),
  A1111 prompt encoding, the passes with progress writes and live previews (the worker's default
  interval), PNG encoding with parameters, thumbnails, files and rows, the end state.
- bare: diffusers alone on the same loaded weights: StableDiffusionImg2ImgPipeline /
  StableDiffusionInpaintPipeline (`from_pipe`) called with the prompt string, the same size, steps,
  scheduler, strength and seeds (CPU generators); for hires fix, the base call with
  output_type="latent", the upscale (bilinear latents or Lanczos pixels) and the img2img call. No
  mask blur or overlay, no PNG, no database.

Job and bare alternate run by run, so a busy machine slows both alike. Goal (issue 16): ≤ 1.10.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_table  # noqa: E402
from bench.worker_overhead import in_process_site  # noqa: E402  (a throwaway DB and media folder)

WORK = ROOT / "build" / "bench-studio"
RATIO_GOAL = 1.10
MODES = {
    "img2img": {"strength": 0.75},
    "inpaint": {"strength": 0.75, "mask_blur": 4},
    "hires latent": {"hires_scale": 2.0, "hires_upscaler": "latent", "hires_strength": 0.7},
    "hires lanczos": {"hires_scale": 2.0, "hires_upscaler": "lanczos", "hires_strength": 0.7},
}


def _pictures(size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (30, 70, 225))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 5, size // 5, 4 * size // 5, 4 * size // 5), fill=255)
    return image, mask


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _run_job(owner, job: dict, mode: str, seed: int, image, mask) -> float:
    from django.core.files.base import ContentFile

    from generation.models import Generation
    from generation.tasks import run_generation

    row = Generation(owner=owner, seed=seed, model_name="bench", **job, **MODES[mode])  # queued; no broker message
    if mode in ("img2img", "inpaint"):
        row.init_image.save("input", ContentFile(_png(image)), save=False)
    if mode == "inpaint":
        row.mask.save("mask", ContentFile(_png(mask)), save=False)
    row.save()
    started = time.perf_counter()
    outcome = run_generation(row.pk)
    elapsed = time.perf_counter() - started
    if outcome != "succeeded":
        row.refresh_from_db()
        sys.exit(f"generation {row.pk} {outcome}: {row.error}")
    return elapsed


class Bare:
    """diffusers' own pipelines on the renderer's loaded components (no copy of the weights)."""

    def __init__(self, pipe, scheduler_key: str):
        import diffusers

        from generation.modelinfo import SCHEDULERS

        choice = SCHEDULERS[scheduler_key]
        self.make_scheduler = lambda: getattr(diffusers, choice.class_name).from_config(pipe.scheduler.config, **dict(choice.options))
        self.base = diffusers.StableDiffusionPipeline(**pipe.components)
        self.img2img = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(self.base, dtype=pipe.dtype)
        self.inpaint = diffusers.StableDiffusionInpaintPipeline.from_pipe(self.base, dtype=pipe.dtype)
        for p in (self.base, self.img2img, self.inpaint):
            p.set_progress_bar_config(disable=True)

    def __call__(self, job: dict, mode: str, seed: int, image, mask) -> float:
        import torch

        settings = MODES[mode]
        scheduler = self.make_scheduler()
        for p in (self.base, self.img2img, self.inpaint):
            p.scheduler = scheduler
        seeds = [seed + i for i in range(job["num_images"])]
        common = dict(prompt=job["prompt"], num_inference_steps=job["steps"], guidance_scale=job["guidance_scale"],
                      num_images_per_prompt=job["num_images"], generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
        size = dict(width=job["width"], height=job["height"])
        started = time.perf_counter()
        if mode == "img2img":
            self.img2img(**common, image=image, strength=settings["strength"])
        elif mode == "inpaint":
            self.inpaint(**common, **size, image=image, mask_image=mask, strength=settings["strength"])
        else:
            scale = settings["hires_scale"]
            width, height = int(job["width"] * scale), int(job["height"] * scale)
            if settings["hires_upscaler"] == "latent":
                latents = self.base(**common, **size, output_type="latent").images
                factor = self.base.vae_scale_factor
                first = torch.nn.functional.interpolate(latents, size=(height // factor, width // factor), mode="bilinear", antialias=False)
            else:
                from PIL import Image

                first = [i.resize((width, height), Image.Resampling.LANCZOS) for i in self.base(**common, **size).images]
            common["generator"] = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            self.img2img(**common, image=first, strength=settings["hires_strength"])
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="measured pairs per mode")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured pairs per mode first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the worker's IMAGESITE_CPU_THREADS)")
    parser.add_argument("--steps", type=int, default=None, help="steps per job (default: the model's)")
    parser.add_argument("--images", type=int, default=1, help="images per job")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    args = parser.parse_args()

    owner, job, renderer = in_process_site(args.threads, WORK, images=args.images, steps=args.steps)
    from django.conf import settings

    from generation.modelinfo import describe_model

    info = describe_model(settings.IMAGESITE_MODEL)

    bare = Bare(renderer.pipe, job["scheduler"])
    image, mask = _pictures(job["width"])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"model {info.name}: {job['width']}x{job['height']}, {job['steps']} steps, {job['scheduler']}, {job['num_images']} image(s); "
          f"previews every {settings.IMAGESITE_PREVIEW_S} s; {args.threads} torch thread(s); load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs", flush=True)

    times = {mode: {"job": [], "bare": []} for mode in modes}
    for i in range(args.warmup + args.runs):
        measured = i >= args.warmup
        line = []
        for mode in modes:
            seed = 1000 + i
            job_s = _run_job(owner, job, mode, seed, image, mask)
            bare_s = bare(job, mode, seed, image, mask)
            if measured:
                times[mode]["job"].append(job_s)
                times[mode]["bare"].append(bare_s)
            line.append(f"{mode} {job_s:.3f}/{bare_s:.3f} s")
        print(f"  {'run' if measured else 'warm-up'} {i + 1:>2}: " + "   ".join(line), flush=True)

    rows = []
    for mode in modes:
        job_median, bare_median = statistics.median(times[mode]["job"]), statistics.median(times[mode]["bare"])
        pair_ratios = [j / b for j, b in zip(times[mode]["job"], times[mode]["bare"])]
        ratio = job_median / bare_median
        rows.append((mode, f"{job_median:.3f} s", f"{bare_median:.3f} s", f"{ratio:.3f}", f"{statistics.median(pair_ratios):.3f}",
                     f"≤ {RATIO_GOAL:.2f} {'ok' if ratio <= RATIO_GOAL else 'MISSED'}"))
    print(f"\n{args.runs} pairs per mode after {args.warmup} warm-up; load average {os.getloadavg()[0]:.2f}")
    print_table(("mode", "job median", "bare median", "job ÷ bare", "median of pair ratios", "goal"), rows)


if __name__ == "__main__":
    main()
