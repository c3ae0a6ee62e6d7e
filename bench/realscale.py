"""Full-size SD 1.5 and SDXL with random weights, pushed through imagesite's own code on the CPU.

    .venv/bin/python bench/realscale.py [--families sd15,sdxl] [--threads 2] [--skip-train]
                                        [--sdxl-train-size 512] [--rows build,load,render,train,lora]

No download: each model is built once from the configs the project ships (generation/sd15_config,
generation/sdxl_config) with seeded random weights and saved in fp16 under build/realscale/ as a
diffusers folder and as one original-layout .safetensors (the real shapes, layouts and file sizes: about
2.1 GB and 6.9 GB). Random weights prove loading, memory and mechanics, not image quality.

Every row runs in its own subprocess, so its peak RSS is its own and a failure (or an out-of-memory kill)
costs that row only. Rows per family:
- build   make the folder and the single file (skipped when they exist)
- load    `generation.pipeline.Renderer` on the folder and on the single file (fp32 on the CPU): seconds,
          and whether every weight of the single file equals the folder's
- render  one job at native size with 2 steps through `Renderer.render` against the bare diffusers
          pipeline call with the same arguments on the same loaded weights, alternating; the ratio
          (goal <= 1.05) and whether the pixels are identical
- convert the single file through `generation.model_cache.diffusers_folder` (what training uses): seconds
          for the first call (converts) and the second (reuses)
- train   two LoRA training steps through `training.dreambooth.train_dreambooth` (the run's own defaults
          for the family on this machine, gradient checkpointing on as on a GPU, no prior preservation, no
          validation): s/step and peak RSS. SDXL trains at 512 px by default (`--sdxl-train-size`): at its
          native 1024 px in float32 on the CPU the row was killed for lack of memory on a 24 GB box after
          8 minutes. 512 px is what docs/measurements/realscale-cpu.json holds (17.4 GiB peak); pass 1024 on
          a machine with more memory (a GPU trains SDXL at 1024 in fp16: bench/gpu_check.sh).
- lora    the LoRA file the training row wrote: its keys by prefix (kohya layout: lora_unet_, lora_te*,
          bundle_emb), and that diffusers' `load_lora_weights` reads it back

diffusers' own `train_dreambooth_lora.py` on the same SD 1.5 folder measured 83-87 s/it against our
47-76 s/step on this kind of machine (../shared/ML-FACTS.md); it needs `accelerate launch` and a
dataset folder, so it is not rerun here.

It prints one table at the end: every row measured so far (build/realscale/results.json keeps them, so
rows may be run a few at a time with --rows/--families). It finishes in under an hour: the rows in
docs/measurements/realscale-cpu.json add up to about 45 minutes (2,680 s) on this 2-core box while it was
busy with other work. The SDXL render at 1024 px dominates (about 19 of those minutes, with --repeat 2).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "build" / "realscale"
CONFIGS = {"sd15": ROOT / "generation" / "sd15_config", "sdxl": ROOT / "generation" / "sdxl_config"}
RATIO_GOAL = 1.05
ROWS = ("build", "load", "render", "convert", "train", "lora")


# --- rows (each runs in a child process: `realscale.py --row NAME --family F`) ---------------------
def _folder(family: str) -> Path:
    return WORK / family / "diffusers"


def _single_file(family: str) -> Path:
    return WORK / family / f"{family}-random.safetensors"


def row_build(family: str, args) -> dict:
    """Random weights from the shipped configs, saved in fp16 like the published releases."""
    from bench.random_models import save_random_model
    from generation.checkpoint_convert import save_single_file

    folder, single = _folder(family), _single_file(family)
    config = CONFIGS[family]
    started = time.perf_counter()
    if not (folder / "model_index.json").is_file():
        tmp = folder.with_name(folder.name + ".partial")
        save_random_model(config, tmp)
        os.replace(tmp, folder)
    built_folder = time.perf_counter() - started
    if not single.is_file():
        save_single_file(str(folder), single, half=True)
    size = lambda p: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) if Path(p).is_dir() else Path(p).stat().st_size  # noqa: E731
    return {"seconds": round(time.perf_counter() - started, 1), "folder_s": round(built_folder, 1),
            "folder_gb": round(size(folder) / 1e9, 2), "single_file_gb": round(size(single) / 1e9, 2)}


def row_load(family: str, args) -> dict:
    """Our loader on the folder and on the single file; every weight compared (by a digest of its
    bytes, so only one model is in memory at a time)."""
    import hashlib

    import torch

    from generation.pipeline import Renderer

    out: dict = {}
    digests = {}
    for label, source in (("folder", _folder(family)), ("single_file", _single_file(family))):
        started = time.perf_counter()
        renderer = Renderer(str(source), "cpu", cpu_threads=args.threads)
        out[f"{label}_s"] = round(time.perf_counter() - started, 1)
        out["pipeline"] = type(renderer.pipe).__name__
        out["detected"] = getattr(renderer.info, "family", "?")
        digests[label] = {
            f"{name}.{key}": hashlib.blake2b(value.detach().contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
            for name, part in renderer.pipe.components.items() if isinstance(part, torch.nn.Module)
            for key, value in part.state_dict().items()
        }
        del renderer
    a, b = digests["folder"], digests["single_file"]
    out["weights_identical"] = a == b
    if a != b:
        out["differ"] = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))[:5]
    return out


def row_render(family: str, args) -> dict:
    """Renderer.render vs the bare pipeline call on the same loaded weights, alternating."""
    import numpy as np
    import torch

    from generation.pipeline import Renderer, RenderSettings

    renderer = Renderer(str(_folder(family)), "cpu", cpu_threads=args.threads)
    size = renderer.info.width
    settings = RenderSettings(prompt="a photo of an astronaut riding a horse", negative_prompt="blurry", seed=1,
                              steps=2, guidance_scale=renderer.info.guidance_scale, width=size, height=size,
                              scheduler=renderer.info.scheduler)
    ours, bare, images = [], [], {}
    for _ in range(args.repeat):
        started = time.perf_counter()
        images["ours"] = renderer.render(settings)[0]
        ours.append(time.perf_counter() - started)
        renderer._set_scheduler(settings.scheduler)  # the same sampler the job used
        started = time.perf_counter()
        images["bare"] = renderer.pipe(
            prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale, width=size, height=size,
            generator=[torch.Generator("cpu").manual_seed(settings.seed)],
        ).images[0]
        bare.append(time.perf_counter() - started)
    identical = bool(np.array_equal(np.asarray(images["ours"]), np.asarray(images["bare"])))
    return {"size": size, "steps": 2, "ours_s": round(min(ours), 1), "bare_s": round(min(bare), 1),
            "ratio": round(min(ours) / min(bare), 3), "pixels_identical": identical}


def row_convert(family: str, args) -> dict:
    from generation.model_cache import diffusers_folder

    cache = WORK / family / "model-cache"
    started = time.perf_counter()
    folder = diffusers_folder(str(_single_file(family)), cache_dir=cache)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = diffusers_folder(str(_single_file(family)), cache_dir=cache)
    second = time.perf_counter() - started
    return {"first_s": round(first, 1), "second_s": round(second, 2), "same_folder": folder == again,
            "pipeline": json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]}


def row_train(family: str, args) -> dict:
    import numpy as np
    from PIL import Image

    from training.dreambooth.loop import train_dreambooth
    from training.dreambooth.devices import default_options_for

    folder = _folder(family)
    resolution = args.sdxl_train_size if family == "sdxl" else None
    # Gradient checkpointing as on a GPU (the CPU default leaves it off): SDXL at 1024 px needs it to fit.
    overrides = {"steps": 2, "prior_preservation": False, "validation_every": 0, "cpu_threads": args.threads,
                 "gradient_checkpointing": True}
    if resolution:
        overrides["resolution"] = resolution
    options = default_options_for(folder, "lora", **overrides)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (options.resolution, options.resolution, 3), dtype=np.uint8)) for _ in range(3)]
    out_dir = WORK / family / "lora-run"
    result = train_dreambooth(base_model=str(folder), instance_images=photos, token="sks", class_noun="dog",
                              options=options, output_dir=out_dir)
    return {"resolution": options.resolution, "rank": options.lora_rank, "s_per_step": round(result.seconds_per_step, 1),
            "gradient_checkpointing": options.gradient_checkpointing, "file": str(result.checkpoint_path),
            "file_mb": round(result.size_bytes / 1e6, 2)}


def row_lora(family: str, args) -> dict:
    """The exported file's keys, and diffusers reading it back into the base pipeline."""
    from collections import Counter

    import torch
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    files = sorted((WORK / family / "lora-run").glob("*.safetensors"))
    if not files:
        raise SystemExit("no LoRA file: run the train row first")
    path = files[0]
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
    prefixes = Counter(k.split(".")[0].split("_")[0] + "_" + k.split(".")[0].split("_")[1] if k.startswith("lora_") else k.split(".")[0] for k in keys)
    pipe = DiffusionPipeline.from_pretrained(str(_folder(family)), torch_dtype=torch.float32, local_files_only=True)
    from generation.lora_files import read_lora_file

    read_lora_file(path).load_into(pipe, "bench")  # as the worker does (the bundled embedding split off)
    loaded = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("lora_A.bench"))
    return {"file": path.name, "keys": len(keys), "by_prefix": dict(prefixes), "unet_modules_loaded": loaded,
            "base_model_version": metadata.get("ss_base_model_version", "")}


# --- the parent: one subprocess per row, a table at the end ----------------------------------------
def _run_row(row: str, family: str, args) -> dict:
    command = [sys.executable, __file__, "--row", row, "--family", family, "--threads", str(args.threads),
               "--sdxl-train-size", str(args.sdxl_train_size), "--repeat", str(args.repeat)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "DJANGO_SETTINGS_MODULE": "imagesite.settings", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    result: dict = {"row": row, "family": family, "wall_s": round(time.perf_counter() - started, 1)}
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        result.update(json.loads(lines[-1][7:]))
    else:
        tail = (err or out).strip().splitlines()[-3:]
        result["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
    peak = [line for line in out.splitlines() if line.startswith("PEAK_RSS_GIB ")]
    if peak:
        result["peak_rss_gib"] = float(peak[-1].split()[1])
    return result


def _print_table(results: list[dict]) -> None:
    print()
    print(f"{'family':7} {'row':8} {'wall s':>7} {'peak GiB':>8}  result")
    for r in results:
        detail = {k: v for k, v in r.items() if k not in ("row", "family", "wall_s", "peak_rss_gib")}
        print(f"{r['family']:7} {r['row']:8} {r['wall_s']:7.1f} {r.get('peak_rss_gib', float('nan')):8.2f}  {json.dumps(detail)}")
    ratios = [r["ratio"] for r in results if "ratio" in r]
    if ratios:
        verdict = "met" if max(ratios) <= RATIO_GOAL else "NOT met"
        print(f"\nrender ratio ours/bare: {', '.join(map(str, ratios))} (goal <= {RATIO_GOAL}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="render pairs (the fastest of each side counts)")
    parser.add_argument("--sdxl-train-size", type=int, default=512,
                        help="SDXL training row's size (default 512: 1024 in float32 outgrows a 24 GB box)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:  # a child: one row, its result and its own peak RSS on stdout
        import django
        import torch

        torch.set_num_threads(args.threads)
        django.setup()
        result = globals()[f"row_{args.row}"](args.family, args)
        print("RESULT " + json.dumps(result), flush=True)
        print(f"PEAK_RSS_GIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f}", flush=True)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [r for r in args.rows.split(",") if r and not (args.skip_train and r in ("train", "lora"))]
    results = []
    for family in args.families.split(","):
        for row in rows:
            result = _run_row(row, family, args)
            results.append(result)
            print(json.dumps(result), flush=True)
            if row == "build" and "error" in result:
                break  # nothing else can run on a model that was not built
    _print_table(_remember(results))


def _remember(results: list[dict]) -> list[dict]:
    """Merge this run's rows into build/realscale/results.json (a row replaces the same family's
    earlier one), so rows run one at a time add up to the whole table; returns every row kept."""
    path = WORK / "results.json"
    kept = json.loads(path.read_text()) if path.is_file() else []
    fresh = {(r["family"], r["row"]) for r in results}
    merged = [r for r in kept if (r["family"], r["row"]) not in fresh] + results
    merged.sort(key=lambda r: (r["family"], ROWS.index(r["row"])))
    path.write_text(json.dumps(merged, indent=1))
    return merged


if __name__ == "__main__":
    main()
