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

Opt-in rows (`--rows prior,retry`; `--cap-gib` alone selects them), each under every memory cap of
`--cap-gib` (GiB, e.g. `6,8,12`; `none` = uncapped), to imitate smaller cards on a big one:
- prior   a subject run as the app trains it: prior preservation (`--class-images`, default 4, 8 steps each)
          rendered first with the run's own memory plan (training.dreambooth.sampling._class_image_plan),
          then 4 LoRA steps with the GPU defaults (gradient checkpointing, fp16, 8-bit AdamW if installed):
          peak VRAM of the class images and of the training apart, the plan each used
- retry   the same with gradient checkpointing (and 8-bit AdamW) off: uncapped, the no-checkpointing peak; under a cap below
          that (SDXL needs ~20 GiB without it), the out-of-memory retry of train_dreambooth: the row says
          whether the run fitted, was retried and finished, or failed after the retry (with its message)
A cap is torch.cuda.set_per_process_memory_fraction(cap / the card's memory), and torch.cuda.mem_get_info
answers as that card would (free = cap - reserved), since the class-image plan reads it. It limits what the
process's allocator holds; a real card also keeps ~0.5 GiB for the CUDA context, so `--cap-gib 7.5` is
closer to an 8 GB card. Without CUDA (--dry-run on the CPU) the caps are skipped, said so, and each row
runs once uncapped for the mechanics; the retry row then injects the out-of-memory error (no GPU to run out).
Budget: the rows share `--budget` with the rest (rows past it are skipped, said so). Estimated on an H200
(not yet measured): a prior row ~40 s for SD 1.5 and ~70 s for SDXL, a retry row that retries ~1.5x that,
plus the build on a fresh machine (~20 s / ~90 s). So `--families sdxl --cap-gib 8,12` (4 rows) fits the
default 440 s; all three caps for both families (12 rows) need two runs, e.g. one per family.

Goals printed beside the figures (judged on reserved memory; the CUDA context, ~0.5 GB, comes on top):
SD 1.5 512² in the low profile < 2.4 GB, SD 1.5 LoRA training < 6 GB, SDXL LoRA training < 12 GB.
Rows start in the order of those goals; all of them end within `--budget` seconds (default 440: with
imports and the table, under 8 minutes), a row cut short saying so.
Results go to build/gpu_check/results.json (and $OUT/gpu_check.json when $OUT is set).

    bash bench/gpu_check.sh --families sdxl --cap-gib 8,12     # SDXL subject runs imitating 8 and 12 GB cards
    bash bench/gpu_check.sh --dry-run --cap-gib 6,8,12         # their mechanics on the CPU (caps skipped)
"""
from __future__ import annotations

import argparse
import contextlib
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
GIB = 1024**3
TRAINING_ROWS = ("train", "prior")  # the rows the training goals judge
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


def row_prior(family: str, dry: bool, cap_gib: float | None = None, class_images: int = 4, row: str = "prior", **_) -> dict:
    """A subject run with prior preservation: class images in the run's own memory plan, then LoRA steps
    (row "retry": gradient checkpointing and 8-bit Adam off). Peaks of the class images and of the training apart, the
    plan(s) used, and what the out-of-memory retry did."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image

    from training.dreambooth import loop, sampling
    from training.dreambooth.devices import default_options_for
    from training.dreambooth.progress import TrainingError

    cuda = torch.cuda.is_available()
    folder = _folder(family, dry)
    resolution = 64 if dry else SIZE[family]
    lower = {"gradient_checkpointing": False, "use_8bit_adam": False} if row == "retry" else {}
    options = default_options_for(
        folder, "lora", steps=2 if dry else 4, prior_preservation=True, num_class_images=class_images,
        class_inference_steps=2 if dry else 8, validation_every=0, resolution=resolution,
        mixed_precision="fp16" if cuda else "no", cpu_threads=1 if dry else None, **lower,
    )
    seen: dict = {"plans": []}
    original = sampling._rendering_on

    @contextlib.contextmanager
    def measured(pipe, device, plan):  # the class images' peak apart from the training's
        seen["plans"].append(f"batch {plan.batch}" + (", model offload" if plan.offload else "") + (", VAE tiling" if plan.vae_tiling else ""))
        with original(pipe, device, plan):
            yield
        seen["class"] = _peak(torch)
        _reset_peak()

    sampling._rendering_on = measured
    injected = dry and row == "retry" and not cuda
    if injected:  # no GPU to run out of: the first training step raises what a GPU would, once
        real_loss = loop._dreambooth_loss

        def out_of_memory_once(*args, **kwargs):
            loop._dreambooth_loss = real_loss
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected: no GPU)")

        loop._dreambooth_loss = out_of_memory_once
    messages: list[str] = []
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(3)]
    name = f"{row}-{family}-{cap_gib or 'uncapped'}"
    class_dir = _work(dry) / f"class-{name}"
    shutil.rmtree(class_dir, ignore_errors=True)  # every row renders its own class images in its own plan
    _reset_peak()
    out: dict = {"resolution": resolution, "class_images": class_images, "cap_gib": cap_gib, "oom_injected": injected}
    try:
        result = loop.train_dreambooth(
            base_model=str(folder), instance_images=photos, token="sks", class_noun="dog", options=options,
            output_dir=_work(dry) / f"lora-{name}", class_images_dir=class_dir,
            progress=lambda p: p.message and messages.append(p.message))
        used = result.options
        out.update(steps=result.steps, s_per_it=round(result.seconds_per_step, 3),
                   ran_with=", ".join([n for n, on in (("gradient checkpointing", used.gradient_checkpointing), ("8-bit Adam", used.use_8bit_adam)) if on]
                                      + [used.mixed_precision if cuda and used.mixed_precision != "no" else "float32"]),
                   outcome="retried, then finished" if messages else "fitted")
    except TrainingError as failed:
        out.update(outcome="failed after the retry", message=str(failed)[:300])
    trained = _peak(torch)
    out.update(retry_message=messages[0] if messages else None, class_plans=seen["plans"],
               **{f"class_{k}": v for k, v in seen.get("class", {}).items()}, **{f"train_{k}": v for k, v in trained.items()})
    for key in ("allocated_gb", "reserved_gb", "peak_rss_gb"):  # the whole run's peak: what the card must hold
        if key in trained:
            out[key] = max(trained[key], seen.get("class", {}).get(key, 0))
    return out


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


ROWS = {"build": row_build, "render": row_render, "train": row_train, "prior": row_prior, "retry": row_prior, "serve": row_serve}
ORDER = {row: i for i, row in enumerate(ROWS)}  # the table's order


def child(spec: dict) -> None:
    if spec.get("cap_gib"):
        _cap_memory(spec["cap_gib"])
    result = ROWS[spec["row"]](**spec)
    print(RESULT + json.dumps(result), flush=True)


def _cap_memory(cap_gib: float) -> None:
    """This process may hold at most `cap_gib` GiB on the GPU, and mem_get_info answers as a card of
    that size would (the class-image plan and the renderer's `auto` read it)."""
    import torch

    limit = int(cap_gib * GIB)
    real = torch.cuda.mem_get_info
    total = real(0)[1]
    if limit > total:
        raise SystemExit(f"a cap of {cap_gib:g} GiB is above this card's {total / GIB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(limit / total, 0)

    def capped(device=None):
        free, _ = real(device)
        return max(0, min(free, limit - torch.cuda.memory_reserved(device))), limit

    torch.cuda.mem_get_info = capped


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
        for kind in ("prior", "retry"):  # opt-in: a subject run under each cap, in the order given
            for cap in args.cap_gib:
                timeout = (240 if family == "sdxl" else 150) * (1.5 if kind == "retry" else 1)
                rows.append({"row": kind, "family": family, "cap_gib": cap, "class_images": args.class_images, "timeout": int(timeout)})
    rows = [row for row in rows if row["row"] == "build" or row["row"] in args.rows]
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
        GOALS_GB.get(("train", spec["family"])) if spec["row"] in TRAINING_ROWS else None)
    if goal is None:
        return ""
    if "reserved_gb" not in result:
        return f"goal < {goal} GB (needs a GPU)"
    return f"goal < {goal} GB: {'met' if result['reserved_gb'] < goal else 'MISSED'}"


def _line(spec: dict, result: dict) -> str:
    what = spec.get("profile") or spec.get("variant") or {"prior": "defaults", "retry": "no-gc"}.get(spec["row"], "")
    if spec["row"] in ("prior", "retry"):
        what += f" cap {spec['cap_gib']:g} GiB" if spec.get("cap_gib") else " uncapped"
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
    if spec["row"] in ("prior", "retry"):
        unit = "reserved_gb" if "reserved_gb" in result else "peak_rss_gb"
        class_peak = f"{result['class_' + unit]:.2f} GB" if "class_" + unit in result else "none drawn"
        plans = " then ".join(result["class_plans"]) or "-"
        memory += (f"  [class images ({plans}) {class_peak}, training {result['train_' + unit]:.2f} GB; "
                   f"{result['outcome']}{' (OOM injected: no GPU)' if result.get('oom_injected') else ''}"
                   f"{'; ran with ' + result['ran_with'] if result.get('ran_with') else ''}"
                   f"{': ' + result['message'] if result.get('message') else ''}]")
    speed = f"{result['s_per_it']:.3f} s/it" if result.get("s_per_it") is not None else "- s/it"
    size = result.get("size") or result.get("resolution")
    extra = f" (ran as {result['profile_used']})" if result.get("profile_used") not in (None, what) else ""
    goal = _goal(spec, result) if result.get("outcome") != "failed after the retry" else ""
    return f"{name} {size:>4}px  {memory}  {speed:>12}  {goal}{extra}"


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
    parser.add_argument("--rows", type=lambda v: [r for r in v.split(",") if r],
                        help="row kinds to run: render,train,serve (the default), prior, retry "
                             "(the default is prior,retry when --cap-gib is given)")
    parser.add_argument("--cap-gib", default=[], type=lambda v: [None if c == "none" else float(c) for c in v.split(",") if c],
                        help="memory caps in GiB for the prior and retry rows, e.g. 6,8,12 (none: uncapped)")
    parser.add_argument("--class-images", type=int, default=4, help="class images per prior/retry row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: run with --dry-run for the mechanics on the CPU.")
    if args.rows is None:
        args.rows = ["prior", "retry"] if args.cap_gib else ["render", "train", "serve"]
    unknown = set(args.rows) - set(ORDER)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}: choose from {', '.join(r for r in ORDER if r != 'build')}")
    if not args.cap_gib:
        args.cap_gib = [None]
    elif not torch.cuda.is_available() and any(args.cap_gib):
        print(f"memory caps {', '.join(f'{c:g}' for c in args.cap_gib if c)} GiB skipped: no CUDA GPU "
              "(the prior and retry rows run once, uncapped, for the mechanics)", flush=True)
        args.cap_gib = [None]
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
    table = sorted(done, key=lambda d: (d[0]["family"], ORDER[d[0]["row"]], str(d[0].get("profile") or d[0].get("variant")),
                                        d[0].get("cap_gib") or 0))
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
