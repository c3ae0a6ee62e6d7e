"""Fit a model's linear latent → RGB preview factors by least squares on its own VAE, and write them
into its imagesite.json ("preview_factors"), where generation.previews reads them.

    .venv/bin/python bench/fit_preview_factors.py [--model generation/demo_model] [--images 512] [--write]

The pairs: images the model was trained on (the demo's synthetic shapes, generation.demo.data),
encoded by the VAE (posterior mean × scaling factor: the scaled latents the denoiser works on), and
the VAE's own decode of those latents, box-averaged to the latent's size (one RGB per latent pixel,
in [-1, 1]). Solves `[latent, 1] @ [factors; bias] ≈ rgb`. Prints the PSNR of the preview against the
VAE decode (at latent size) on held-out images, for the fitted factors and for SD 1.x's published
ones, so the gain is on record.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation.demo.data import make_dataset  # noqa: E402
from generation.previews import SD1_FACTORS, LinearDecoder  # noqa: E402


def latents_and_targets(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, H, W, 3) → scaled latents (n, c, h, w) and the VAE's decode of them pooled to (n, h, w, 3) in [-1, 1]."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents, decoded = [], []
    with torch.no_grad():
        for batch in pixels.split(64):
            z = vae.encode(batch).latent_dist.mean * vae.config.scaling_factor
            out = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
            factor = out.shape[-1] // z.shape[-1]
            latents.append(z)
            decoded.append(torch.nn.functional.avg_pool2d(out, factor).permute(0, 2, 3, 1))
    return torch.cat(latents), torch.cat(decoded)


def fit(latents: torch.Tensor, targets: torch.Tensor) -> tuple[list[list[float]], list[float]]:
    """Least squares: (factors (c, 3), bias (3))."""
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = targets.reshape(-1, 3).double()
    solution = torch.linalg.lstsq(x, y).solution
    return [[round(v, 4) for v in row] for row in solution[:-1].tolist()], [round(v, 4) for v in solution[-1].tolist()]


def psnr(decoder: LinearDecoder, latents: torch.Tensor, targets: torch.Tensor) -> float:
    """PSNR (dB, 8-bit) of the decoder's preview against the VAE decode at latent size."""
    preview = decoder(latents).astype(np.float64)
    reference = ((targets.clamp(-1, 1) + 1) * 127.5).round().numpy()
    mse = float(np.mean((preview - reference) ** 2))
    return 10 * math.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "generation" / "demo_model"))
    parser.add_argument("--images", type=int, default=512, help="training images drawn for the fit")
    parser.add_argument("--held-out", type=int, default=128, help="other images the PSNR is measured on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the factors into the model's imagesite.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(args.model) / "vae", local_files_only=True).eval()
    train_images, _ = make_dataset(args.images, seed=1234)
    test_images, _ = make_dataset(args.held_out, seed=5678)
    train = latents_and_targets(vae, train_images)
    test = latents_and_targets(vae, test_images)
    factors, bias = fit(*train)
    fitted = LinearDecoder(tuple(map(tuple, factors)), tuple(bias), "fitted")
    print("| factors | PSNR vs VAE decode at latent size (held-out, dB) |\n| --- | --- |")
    print(f"| fitted on this VAE ({args.images} images) | {psnr(fitted, *test):.1f} |")
    print(f"| SD 1.x published (ComfyUI) | {psnr(LinearDecoder(SD1_FACTORS), *test):.1f} |")
    print(json.dumps({"factors": factors, "bias": bias}))
    if args.write:
        path = Path(args.model) / "imagesite.json"
        config = json.loads(path.read_text())
        config["preview_factors"] = {"factors": factors, "bias": bias,
                                     "note": "bench/fit_preview_factors.py: least squares on this model's VAE"}
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote preview_factors into {path}")


if __name__ == "__main__":
    main()
