"""Peak VRAM and speed of imagesite's own code on a GPU, at full size, with random weights.

    bash bench/gpu_check.sh              # on a machine with one CUDA GPU: under 8 minutes on an H100/H200
    bash bench/gpu_check.sh --dry-run    # the same mechanics on the CPU with tiny models (a few minutes)

No download: SD 1.5 and SDXL are built from the configs the project ships (generation/sd15_config,
generation/sdxl_config) with seeded random weights, directly on the GPU in fp16, and saved once as
diffusers folders under build/gpu_check/ (about 2.1 and 6.9 GB). Random weights measure memory and speed,
never image quality. Then, each row in its own subprocess with its own timeout (a failure or an
out-of-memory costs that row only, and the table still prints):

- render  SD 1.5 @512 and SDXL @1024 through `generation.pipeline.Renderer` in each memory profile
          (full, medium, low: the plan `plan_memory` makes), one image, 8 steps: peak
          `torch.cuda.max_memory_allocated` / `max_memory_reserved` over load + render, and s/it (the
          median step, text encoding and VAE decode excluded)
- train   LoRA through `training.dreambooth.train_dreambooth` (SD 1.5 @512, SDXL @1024, 4 steps, no prior
          preservation, fp16 mixed precision) plain, with gradient checkpointing, and with gradient
          checkpointing + bitsandbytes' 8-bit AdamW (skipped, and said so, when bitsandbytes is missing):
          peak VRAM over load + training
- serve   8 compatible jobs in one pipeline call ÷ one by one (generation.batching; largest pixel
          difference), and a job with a subject's random LoRA fused ÷ bare against peft's unmerged layers,
          the base image exact afterwards (generation.adapters)

Goals printed beside the figures (judged on reserved memory; the CUDA context, ~0.5 GB, comes on top):
SD 1.5 512² in the low profile < 2.4 GB, SD 1.5 LoRA training < 6 GB, SDXL LoRA training < 12 GB.
Rows start in the order of those goals; all of them end within `--budget` seconds (default 440: with
imports and the table, under 8 minutes), a row cut short saying so.
Results go to build/gpu_check/results.json (and $OUT/gpu_check.json when $OUT is set).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = {"sd15": ROOT / "generation" / "sd15_config", "sdxl": ROOT / "generation" / "sdxl_config"}
TINY = {"sd15": "sd1", "sdxl": "sdxl"}  # tests/tiny_models.py families for --dry-run
SIZE = {"sd15": 512, "sdxl": 1024}
PROFILES = ("full", "medium", "low")
VARIANTS = {"plain": (False, False), "gc": (True, False), "gc+8bit": (True, True)}  # (checkpointing, 8-bit Adam)
GOALS_GB = {("render", "sd15", "low"): 2.4, ("train", "sd15"): 6.0, ("train", "sdxl"): 12.0}
RESULT = "GPU_CHECK_RESULT "


def _work(dry: bool) -> Path:
    return ROOT / "build" / ("gpu_check-dry" if dry else "gpu_check")


def _folder(family: str, dry: bool) -> Path:
    return _work(dry) / family


# --- rows: each runs in a child process (`gpu_check.py --child '{"row": ...}'`) -------------------------
def row_build(family: str, dry: bool, **_) -> dict:
    """The diffusers folder: random weights from the shipped configs, made on the GPU in fp16."""
    folder = _folder(family, dry)
    started = time.perf_counter()
    if not (folder / "model_index.json").is_file():
        if dry:
            from tests.tiny_models import build_tiny_model

            build_tiny_model(TINY[family], folder.with_name(folder.name + ".partial"))
        else:
            _build_full(family, folder.with_name(folder.name + ".partial"))
        os.replace(folder.with_name(folder.name + ".partial"), folder)
    gb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9
    return {"seconds": round(time.perf_counter() - started, 1), "folder_gb": round(gb, 2)}


def _build_full(family: str, out: Path, device: str = "cuda") -> None:
    from bench.random_models import save_random_model

    save_random_model(CONFIGS[family], out, device)


def row_render(family: str, dry: bool, profile: str, **_) -> dict:
    """One image through Renderer in `profile`: peak memory over load + render, median s/it."""
    import torch

    from generation.pipeline import Renderer, RenderSettings

    _reset_peak()
    started = time.perf_counter()
    renderer = Renderer(str(_folder(family, dry)), profile, cpu_threads=1 if dry else None)
    load_s = time.perf_counter() - started
    size = 64 if dry else SIZE[family]
    steps = 3 if dry else 8
    settings = RenderSettings(prompt="a photo of an astronaut riding a horse", negative_prompt="blurry", seed=1,
                              steps=steps, guidance_scale=7.0, width=size, height=size, scheduler=renderer.info.scheduler)
    stamps: list[float] = []
    started = time.perf_counter()
    renderer.render(settings, on_step=lambda step, total: stamps.append(time.perf_counter()))
    total_s = time.perf_counter() - started
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"size": size, "steps": steps, "profile_used": renderer.profile, "load_s": round(load_s, 1),
            "s_per_it": round(statistics.median(intervals), 3) if intervals else None,
            "render_s": round(total_s, 2), **_peak(torch)}


def row_train(family: str, dry: bool, variant: str, **_) -> dict:
    """A few LoRA steps through train_dreambooth: peak memory over load + training."""
    import numpy as np
    import torch
    from PIL import Image

    from training.dreambooth.devices import _bitsandbytes_installed, default_options_for
    from training.dreambooth.loop import train_dreambooth

    checkpointing, eight_bit = VARIANTS[variant]
    cuda = torch.cuda.is_available()
    if eight_bit and not (cuda and _bitsandbytes_installed()):
        return {"skipped": "bitsandbytes is not installed" if cuda else "8-bit Adam needs a CUDA GPU"}
    folder = _folder(family, dry)
    resolution = 64 if dry else SIZE[family]
    options = default_options_for(
        folder, "lora", steps=2 if dry else 4, prior_preservation=False, validation_every=0, resolution=resolution,
        gradient_checkpointing=checkpointing, use_8bit_adam=eight_bit, mixed_precision="fp16" if cuda else "no",
        cpu_threads=1 if dry else None,
    )
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(3)]
    _reset_peak()
    out = _work(dry) / f"lora-{family}-{variant}"
    result = train_dreambooth(base_model=str(folder), instance_images=photos, token="sks", class_noun="dog",
                              options=options, output_dir=out)
    return {"resolution": resolution, "steps": result.steps, "rank": options.lora_rank,
            "s_per_it": round(result.seconds_per_step, 3), "lora_mb": round(result.size_bytes / 1e6, 1), **_peak(torch)}


def row_serve(family: str, dry: bool, **_) -> dict:
    """The serving engine on the GPU (issue 17): 8 compatible jobs in one call (generation.batching) ÷
    8 renders one by one, with the largest pixel difference; and a subject's random LoRA fused for the
    job ÷ the bare render, against peft's unmerged layers, the base exact afterwards."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    from bench.subject_cost import add_random_lora
    from generation.adapters import Adapter
    from generation.batching import BatchItem, render_batch
    from generation.lora_files import write_lora_file
    from generation.pipeline import Renderer, RenderSettings

    renderer = Renderer(str(_folder(family, dry)), "full", cpu_threads=1 if dry else None)
    size, steps = (64, 3) if dry else (SIZE[family], 8)
    jobs = [RenderSettings(prompt=f"a photo of an astronaut riding a horse, take {i}", negative_prompt="blurry", seed=100 + i, steps=steps,
                           guidance_scale=7.0, width=size, height=size, scheduler=renderer.info.scheduler) for i in range(8)]

    def timed(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    renderer.render(jobs[0])  # warm-up
    solo_s, solo = timed(lambda: [renderer.render(s)[0] for s in jobs])
    batch_s, batched = timed(lambda: render_batch(renderer, [BatchItem(s) for s in jobs]))
    difference = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b[0], np.int16)).max()) for a, b in zip(solo, batched))
    unet = UNet2DConditionModel.from_config(renderer.pipe.unet.config)
    add_random_lora(unet, 16, seed=1)
    path = write_lora_file(_work(dry) / f"subject-{family}.safetensors", unet, {}, is_xl=family == "sdxl")
    del unet
    adapter = Adapter(kind="lora", path=str(path), key="gpu-check", name="sks")
    base = renderer.render(jobs[0])[0]
    times: dict[str, list[float]] = {"bare": [], "fused": [], "peft": []}
    for _ in range(3):
        for kind in times:
            renderer.adapters.fuse = kind == "fused"
            times[kind].append(timed(lambda: renderer.render(jobs[0], adapter=None if kind == "bare" else adapter))[0])
    after = renderer.render(jobs[0])[0]
    bare = statistics.median(times["bare"])
    return {"size": size, "steps": steps, "batch8_ratio": round(batch_s / solo_s, 3), "batch_max_diff": difference,
            "fused_ratio": round(statistics.median(times["fused"]) / bare, 3), "peft_ratio": round(statistics.median(times["peft"]) / bare, 3),
            "base_exact_after": bool(np.array_equal(np.asarray(base), np.asarray(after))), **_peak(torch)}


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak(torch) -> dict:
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB → GB (approx.)
    if not torch.cuda.is_available():
        return {"peak_rss_gb": round(rss_gb, 2)}
    return {"allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2), "peak_rss_gb": round(rss_gb, 2)}


ROWS = {"build": row_build, "render": row_render, "train": row_train, "serve": row_serve}


def child(spec: dict) -> None:
    result = ROWS[spec["row"]](**spec)
    print(RESULT + json.dumps(result), flush=True)


# --- the parent: plan, run each row with a timeout, print the table ------------------------------------
def plan(args) -> list[dict]:
    """Rows in the order of the goals, so a short budget still measures what matters most."""
    rows: list[dict] = []
    for family in args.families:
        rows.append({"row": "build", "family": family, "timeout": 300 if family == "sdxl" else 150})
        first = [("render", "low"), ("train", "gc+8bit"), ("train", "plain"), ("render", "full"),
                 ("render", "medium"), ("train", "gc")]
        for kind, what in first:
            key = "profile" if kind == "render" else "variant"
            slow = family == "sdxl" and (what == "low" or kind == "train")
            rows.append({"row": kind, "family": family, key: what, "timeout": 240 if slow else 150})
        rows.append({"row": "serve", "family": family, "timeout": 240 if family == "sdxl" else 150})
    for row in rows:
        row["dry"] = args.dry_run
        if args.dry_run:
            row["timeout"] = 240
    return rows


def run_row(spec: dict) -> dict:
    started = time.perf_counter()
    payload = {k: v for k, v in spec.items() if k != "timeout"}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(payload)], cwd=ROOT,
                              capture_output=True, text=True, timeout=spec["timeout"])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {spec['timeout']} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"error": (tail[-1] if tail else f"exit status {done.returncode}")[:200]}
    result = json.loads(lines[-1][len(RESULT):])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _goal(spec: dict, result: dict) -> str:
    goal = GOALS_GB.get((spec["row"], spec["family"], spec.get("profile"))) or (
        GOALS_GB.get((spec["row"], spec["family"])) if spec["row"] == "train" else None)
    if goal is None:
        return ""
    if "reserved_gb" not in result:
        return f"goal < {goal} GB (needs a GPU)"
    return f"goal < {goal} GB: {'met' if result['reserved_gb'] < goal else 'MISSED'}"


def _line(spec: dict, result: dict) -> str:
    what = spec.get("profile") or spec.get("variant") or ""
    name = f"{spec['row']:<6} {spec['family']:<5} {what:<8}"
    if "error" in result or "skipped" in result:
        return f"{name} {'FAILED: ' + result['error'] if 'error' in result else 'skipped: ' + result['skipped']}"
    if spec["row"] == "build":
        return f"{name} {result['folder_gb']:>6.2f} GB on disk, {result['seconds']:.0f} s"
    if spec["row"] == "serve":
        return (f"{name} {result['size']:>4}px  8 jobs in one call ÷ one by one {result['batch8_ratio']:.2f} (max diff {result['batch_max_diff']}); "
                f"subject LoRA fused ÷ bare {result['fused_ratio']:.2f}, peft {result['peft_ratio']:.2f}, base exact after: {result['base_exact_after']}")
    memory = (f"alloc {result['allocated_gb']:>6.2f} GB  reserved {result['reserved_gb']:>6.2f} GB"
              if "reserved_gb" in result else f"(CPU) peak RSS {result['peak_rss_gb']:>5.2f} GB")
    speed = f"{result['s_per_it']:.3f} s/it" if result.get("s_per_it") is not None else "- s/it"
    size = result.get("size") or result.get("resolution")
    extra = f" (ran as {result['profile_used']})" if result.get("profile_used") not in (None, what) else ""
    return f"{name} {size:>4}px  {memory}  {speed:>12}  {_goal(spec, result)}{extra}"


def header() -> str:
    import importlib.metadata as md

    import torch

    versions = []
    for name in ("torch", "diffusers", "transformers", "peft", "bitsandbytes"):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            versions.append(f"{name} missing")
    device = (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 1e9:.1f} GB"
              if torch.cuda.is_available() else "no CUDA GPU: CPU")
    return f"device: {device}\n{', '.join(versions)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: the mechanics, in minutes")
    parser.add_argument("--families", default="sd15,sdxl", type=lambda v: [f for f in v.split(",") if f])
    parser.add_argument("--budget", type=float, default=440,
                        help="seconds for all rows: a row gets at most what is left, none starts with under 20 s left")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: run with --dry-run for the mechanics on the CPU.")
    print(header(), flush=True)
    started = time.perf_counter()
    done: list[tuple[dict, dict]] = []
    for spec in plan(args):
        left = args.budget - (time.perf_counter() - started)
        spec["timeout"] = int(min(spec["timeout"], left))  # the whole run ends within the budget
        if left < 20:
            result = {"skipped": f"over the {args.budget:.0f} s budget"}
        elif spec["row"] != "build" and any(s["row"] == "build" and s["family"] == spec["family"] and "error" in r for s, r in done):
            result = {"skipped": "the model could not be built"}
        else:
            result = run_row(spec)
        done.append((spec, result))
        print(_line(spec, result), flush=True)
    order = {"build": 0, "render": 1, "train": 2, "serve": 3}
    table = sorted(done, key=lambda d: (d[0]["family"], order[d[0]["row"]], str(d[0].get("profile") or d[0].get("variant"))))
    print(f"\n== imagesite on {'the CPU (dry run: tiny models, mechanics only)' if args.dry_run else 'the GPU'}, "
          f"{time.perf_counter() - started:.0f} s ==")
    print("\n".join(_line(spec, result) for spec, result in table))
    report = {"header": header(), "rows": [{**spec, **result} for spec, result in done]}
    _work(args.dry_run).mkdir(parents=True, exist_ok=True)
    (_work(args.dry_run) / "results.json").write_text(json.dumps(report, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
