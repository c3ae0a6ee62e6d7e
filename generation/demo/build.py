"""Rebuild the demo model from scratch: tokenizer, VAE, then UNet + text encoder, then save.

Run without Django::

    .venv/bin/python -m generation.demo.build --out generation/demo_model --seed 0

or through ``python manage.py build_demo_model``. Deterministic for a seed as long as each stage ends
by its step count (``--minutes`` caps wall time instead, which makes the step count machine-dependent).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import configs, pipeline, tokenizer as tok_mod

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "demo_model"


def build(out: Path, *, seed: int = 0, vae_steps: int = 1500, unet_steps: int = 4000,
          minutes: float | None = None, untrained: bool = False, bpe_file: str | None = None,
          checkpoint_every: int = 500, threads: int | None = None, dataset_size: int = 16000,
          log: Callable[[str], None] = print) -> dict:
    """Build the demo model into ``out`` (a diffusers folder) and return a summary dict.

    ``minutes`` caps the wall time of the whole build (the VAE gets 15% of it); ``untrained`` saves
    seeded random weights only (seconds; for wiring things up). Everything runs on the CPU in fp32.
    """
    t0 = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    tokenizer = tok_mod.load_or_build_tokenizer(out / "tokenizer", bpe_file)
    ids = tokenizer("a photo of a cat").input_ids
    if ids != [49406, 320, 1125, 539, 320, 2368, 49407]:
        raise RuntimeError(f"tokenizer does not match CLIP: {ids}")
    vae, unet, text_encoder = configs.new_models(seed)
    summary: dict = {"seed": seed, "threads": torch.get_num_threads(), "dataset_size": dataset_size}
    if not untrained:
        from .train_unet import train_unet
        from .train_vae import encode_dataset, train_vae

        vae_minutes = None if minutes is None else 0.15 * minutes
        summary["vae"] = train_vae(vae, steps=vae_steps, seed=seed, minutes=vae_minutes, log=log)
        latents, captions = encode_dataset(vae, n=dataset_size, seed=seed + 1, log=log)
        unet_minutes = None if minutes is None else max(1.0, minutes - (time.monotonic() - t0) / 60)

        def checkpoint(step: int, ema_unet, ema_text) -> None:
            ck = out.parent / f"{out.name}-ckpt"
            pipeline.save_model_folder(pipeline.assemble(vae, ema_unet, ema_text, tokenizer), ck,
                                       tok_mod.save_tokenizer)
            log(f"checkpoint at step {step} -> {ck}")

        summary["unet"] = train_unet(unet, text_encoder, tokenizer, latents, captions,
                                     steps=unet_steps, seed=seed, minutes=unet_minutes,
                                     checkpoint_every=checkpoint_every, checkpoint_fn=checkpoint,
                                     log=log)
    pipe = pipeline.assemble(vae, unet, text_encoder, tokenizer)
    pipeline.save_model_folder(pipe, out, tok_mod.save_tokenizer)
    summary["minutes"] = round((time.monotonic() - t0) / 60, 1)
    if not untrained:  # clock-free, deterministic command with the step counts this build reached
        summary["reproduce"] = (
            f"python -m generation.demo.build --seed {seed} --threads {summary['threads']} "
            f"--dataset-size {dataset_size} --vae-steps {summary['vae']['steps']} "
            f"--unet-steps {summary['unet']['steps']}")
    (out / "build_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"saved {out} in {summary['minutes']} min")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options shared by this module and the Django management command."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--minutes", type=float, default=None,
                        help="cap on the build's wall time (then not step-exact deterministic)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--dataset-size", type=int, default=16000, help="images encoded for the UNet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bpe-file", default=None, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--untrained", action="store_true", help="save seeded random weights only")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    a = parser.parse_args(argv)
    build(a.out, seed=a.seed, vae_steps=a.vae_steps, unet_steps=a.unet_steps, minutes=a.minutes,
          untrained=a.untrained, bpe_file=a.bpe_file, checkpoint_every=a.checkpoint_every,
          threads=a.threads, dataset_size=a.dataset_size)


if __name__ == "__main__":
    main()
