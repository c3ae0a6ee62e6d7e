"""Continue the demo model's UNet + text-encoder training from a saved folder.

The full build (``generation.demo.build``) is the recipe; this stage adds training steps to a model
whose build was cut short (e.g. by ``--minutes`` on a busy machine), without redoing the VAE::

    .venv/bin/python -m generation.demo.resume --src generation/demo_model --out /tmp/demo2 \\
        --unet-steps 3000 --minutes 28 --threads 1

The VAE is kept as it is, the latents are re-encoded from the same synthetic data (seed + 1, as
the build does), and the build summary records the extra stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from . import pipeline, tokenizer as tok_mod


def resume(src: Path, out: Path, *, seed: int = 0, unet_steps: int = 3000, minutes: float | None = None,
           lr: float = 3e-4, dataset_size: int = 16000, threads: int | None = None,
           checkpoint_every: int = 500, timesteps: str = "uniform") -> dict:
    """Load ``src`` (a demo model folder), train its UNet and text encoder ``unet_steps`` more
    (cosine from ``lr``), save to ``out``; returns the stage's summary. Every ``checkpoint_every``
    steps the EMA weights go to ``<out>-ckpt/`` (bench them while it trains)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .train_unet import train_unet
    from .train_vae import encode_dataset

    t0 = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    tokenizer = tok_mod.load_or_build_tokenizer(src / "tokenizer")
    vae = AutoencoderKL.from_pretrained(src / "vae")
    unet = UNet2DConditionModel.from_pretrained(src / "unet")
    text_encoder = CLIPTextModel.from_pretrained(src / "text_encoder")
    latents, captions = encode_dataset(vae, n=dataset_size, seed=seed + 1)
    # The app's defaults as tuned for this model (e.g. guidance), kept in every folder written here.
    defaults_path = src / "imagesite.json"
    tuned = json.loads(defaults_path.read_text()) if defaults_path.exists() else None

    def save(unet_part, text_part, folder: Path) -> None:
        pipeline.save_model_folder(pipeline.assemble(vae, unet_part, text_part, tokenizer), folder,
                                   tok_mod.save_tokenizer, extra_defaults=tuned)

    def checkpoint(step: int, ema_unet, ema_text) -> None:
        ck = out.parent / f"{out.name}-ckpt"
        save(ema_unet, ema_text, ck)
        print(f"checkpoint at step {step} -> {ck}", flush=True)

    # A different data order from the first stage, still deterministic for the seed.
    stage = train_unet(unet, text_encoder, tokenizer, latents, captions, steps=unet_steps, seed=seed + 1000,
                       lr=lr, minutes=minutes, checkpoint_every=checkpoint_every, checkpoint_fn=checkpoint,
                       timesteps=timesteps)
    tmp = out.parent / f"{out.name}-resume-tmp"
    save(unet, text_encoder, tmp)
    summary_path = src / "build_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    stage.update(lr=lr, seed=seed + 1000, timesteps=timesteps, minutes=round((time.monotonic() - t0) / 60, 1))
    summary.setdefault("continued", []).append(stage)
    for name in ("README.md", "samples.png"):  # documentation travels with the weights
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    (tmp / "build_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--dataset-size", type=int, default=16000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--timesteps", choices=["uniform", "logit_normal"], default="uniform")
    args = parser.parse_args(argv)
    print(resume(args.src, args.out, seed=args.seed, unet_steps=args.unet_steps, minutes=args.minutes,
                 lr=args.lr, dataset_size=args.dataset_size, threads=args.threads,
                 checkpoint_every=args.checkpoint_every, timesteps=args.timesteps))


if __name__ == "__main__":
    main()
