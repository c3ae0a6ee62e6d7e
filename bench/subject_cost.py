"""What a subject's LoRA costs a job (issue 17, "a subject costs little"), fused vs peft's path.

    .venv/bin/python bench/subject_cost.py [--model demo|sd15] [--threads 1] [--repeats 5] [--steps N] [--size PX]

Jobs alternate in one run (bare, fused, bare, peft, ...) so a busy machine slows them alike; each
row is the median of `--repeats` jobs ÷ the median bare job. "fused" merges the LoRA into the
UNet's weights for the job and writes the kept copies back after it (generation.adapters, the
default); "peft" leaves peft's unmerged layers on every step (`LoadedAdapters.fuse = False`). After
the run, every bare job's image (demo) or UNet output (sd15) must equal the first bit for bit.

- `demo`: whole jobs through the Renderer on the shipped demo model (64 px, 20 steps), the LoRA a
  training run's kohya file (rank 8 on the attention projections, its token rows bundled).
- `sd15`: the SD 1.5-shaped UNet (generation/sd15_config, seeded random weights: realistic shapes and
  costs, no picture) with a rank-8 LoRA on its attention projections, put on through the same
  `LoadedAdapters.applied`; a job is `--steps` UNet calls (CFG batch of 2) at `--size` px with random
  prompt states. No VAE and no text encoder: they cost the same with or without a LoRA, so this
  ratio is the UNet's (an upper bound for a whole job's).
Goal: fused ÷ bare ≤ 1.10, judged on the fastest job of each kind (the least disturbed on a shared
machine; the medians are printed beside). Random LoRA weights measure cost only, never what a LoRA draws.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GOAL = 1.10
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_random_lora(unet, rank: int, seed: int, scale: float = 0.02) -> None:
    """A seeded random peft LoRA on the UNet's attention projections (bench/gpu_check.py uses it too)."""
    import torch
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def _demo(args, folder: Path):
    """(job(kind) -> output, the Adapter): whole Renderer jobs on the demo model."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel
    from django.conf import settings

    from generation.adapters import Adapter
    from generation.lora_files import write_lora_file
    from generation.pipeline import Renderer, RenderSettings

    renderer = Renderer(settings.IMAGESITE_MODEL, "cpu", cpu_threads=args.threads)
    unet = UNet2DConditionModel.from_pretrained(Path(settings.IMAGESITE_MODEL) / "unet")
    add_random_lora(unet, 8, seed=1, scale=0.1)
    ids = torch.tensor(renderer.pipe.tokenizer("sks", add_special_tokens=False).input_ids)
    width = renderer.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    rows = {"token_ids": ids, "embeddings": torch.randn(len(ids), width, generator=torch.Generator().manual_seed(2))}
    path = write_lora_file(folder / "sks.safetensors", unet, {}, is_xl=False, token="sks", token_state=rows)
    adapter = Adapter(kind="lora", path=str(path), key="run-1", name="sks")
    s = RenderSettings(prompt="a photo of sks dog", negative_prompt="", seed=11, steps=args.steps or 20, guidance_scale=7.5,
                       width=args.size or 64, height=args.size or 64, scheduler="dpmpp_2m", num_images=1)

    def job(kind: str):
        renderer.adapters.fuse = kind == "fused"
        return np.asarray(renderer.render(s, adapter=None if kind == "bare" else adapter)[0])

    return job, f"demo model, {s.width} px, {s.steps} steps, whole jobs (Renderer.render)"


def _sd15(args, folder: Path):
    """(job(kind) -> output): UNet-only jobs on the SD 1.5-shaped random UNet."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from django.conf import settings

    from generation.adapters import Adapter, LoadedAdapters
    from generation.lora_files import write_lora_file

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(ROOT / "generation" / "sd15_config" / "unet")).eval()
    add_random_lora(unet, 8, seed=1)
    path = write_lora_file(folder / "sks.safetensors", unet, {}, is_xl=False)
    unet.unload_lora()
    demo = StableDiffusionPipeline.from_pretrained(settings.IMAGESITE_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline(vae=demo.vae, text_encoder=demo.text_encoder, tokenizer=demo.tokenizer, unet=unet,
                                   scheduler=demo.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    adapters = LoadedAdapters(pipe)
    adapter = Adapter(kind="lora", path=str(path), key="run-1", name="sks")
    side = (args.size or 256) // 8
    steps = 0 if args.steps < 0 else args.steps or 4
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, side, side, generator=generator)
    states = torch.randn(2, 77, 768, generator=generator)
    with adapters.applied(adapter):  # loaded once, as the LRU keeps it for a warm worker
        pass

    def job(kind: str):
        adapters.fuse = kind == "fused"
        with torch.no_grad(), adapters.applied(None if kind == "bare" else adapter):
            out = latents
            for t in range(steps):
                out = unet(out, 999 - t * 50, encoder_hidden_states=states).sample
            return out.clone()

    touched = sum(m.weight.numel() * m.weight.element_size() for n, m in unet.named_modules()
                  if n.endswith((".to_q.base_layer", ".to_k.base_layer", ".to_v.base_layer", ".to_out.0.base_layer")))
    return job, (f"SD 1.5-shaped random UNet, fp32, {side * 8} px (latent {side}²), {steps} UNet calls of batch 2 per job; "
                 f"weights kept per fused job: {touched / 1e6:.0f} MB ({touched / 2e6:.0f} MB in fp16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "sd15"), default="demo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="demo: sampler steps (20); sd15: UNet calls per job (4; -1: none, the attach + fuse + restore alone)")
    parser.add_argument("--size", type=int, default=0, help="px (demo 64, sd15 256)")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesite.settings")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import django
    import numpy as np
    import torch

    django.setup()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        job, what = (_demo if args.model == "demo" else _sd15)(args, Path(tmp))
        first = job("bare")  # warm-up: the first call of each kind is not timed
        job("fused"), job("peft")
        times: dict[str, list[float]] = {"bare": [], "fused": [], "peft": []}
        identical = True
        for _ in range(args.repeats):
            for kind in ("bare", "fused", "bare", "peft"):
                started = time.perf_counter()
                out = job(kind)
                times[kind].append(time.perf_counter() - started)
                if kind == "bare":
                    identical &= bool(torch.equal(out, first) if isinstance(out, torch.Tensor) else np.array_equal(out, first))
    bare = statistics.median(times["bare"])
    print(f"\n{what}; torch threads {args.threads}; {args.repeats} repeats (median)\n")
    print("| job                  | median s |  min s | ÷ bare (medians) | ÷ bare (mins) | goal         |")
    print("|----------------------|---------:|-------:|-----------------:|--------------:|--------------|")
    print(f"| bare (no adapters)   | {bare:8.3f} | {min(times['bare']):6.3f} |            1.000 |         1.000 |              |")
    for kind, label in (("fused", "subject, fused"), ("peft", "subject, peft layers")):
        ratio, low = statistics.median(times[kind]) / bare, min(times[kind]) / min(times["bare"])
        judged = kind == "fused" and not (args.model == "sd15" and args.steps < 0)  # -1: the fixed cost alone
        goal = f"≤ {GOAL:.2f} {'ok' if low <= GOAL else 'MISSED'}" if judged else ""
        print(f"| {label:<20} | {statistics.median(times[kind]):8.3f} | {min(times[kind]):6.3f} | {ratio:16.3f} "
              f"| {low:13.3f} | {goal:<12} |")
    print(f"\nevery bare job bit-identical to the first (after fused and peft jobs): {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
