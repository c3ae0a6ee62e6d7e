"""Live previews of a running job: the image so far, decoded cheaply from the latents (worker side).

What AUTOMATIC1111, ComfyUI and InvokeAI do: take the denoiser's current estimate of the clean latents
(x0, not the noisy x_t the next step starts from), map each latent pixel's channels to RGB with a
linear map fitted to the family's VAE, `clamp(-1, 1)`, `(x + 1) * 127.5`. That costs a 4×3 matrix
product per latent pixel, so a preview is the latent's size (1/8 of the image per side for SD, 1/4 for
the demo model) and the page scales it up. When the operator supplies TAESD weights (a tiny decoder
distilled from the VAE), previews are decoded with it instead, at the image's size (IMAGESITE_TAESD).

The x0 estimate per scheduler, captured by wrapping the job's scheduler `step`:
- Euler, Euler a, DDIM (and any scheduler whose step output has `pred_original_sample`): that.
- DPM-Solver++ (multistep; `algorithm_type` dpmsolver++): its step converts the model output into the
  data prediction it solves with and keeps it as `model_outputs[-1]`: exactly x0.
- Others on the plain DDPM schedule (PLMS, DPM-Solver with noise prediction): from the model output,
  the sample and ᾱ_t: epsilon x0 = (x_t − √(1−ᾱ) ε) / √ᾱ; v x0 = √ᾱ x_t − √(1−ᾱ) v; sample x0 = output.
- Anything else: the step-end latents (x_{t−1}, noisier; exact on the last step).
"""
from __future__ import annotations

import functools
import io
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("generation.previews")

# Latent → RGB factors (rows: latent channels; columns: R, G, B) and bias, from ComfyUI's
# comfy/latent_formats.py (SD15, also used for SD 2.x; SDXL); they act on the scaled latents the
# denoiser works on, as here.
SD1_FACTORS = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
SDXL_FACTORS = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
SDXL_BIAS = (0.1084, -0.0175, -0.0011)
NO_BIAS = (0.0, 0.0, 0.0)

# TAESD weights per family, as sub-folders of IMAGESITE_TAESD (madebyollin/taesd and /taesdxl in
# diffusers' AutoencoderTiny layout).
TAESD_FOLDERS = {"sd1": "taesd", "sd2": "taesd", "sd2v": "taesd", "sdxl": "taesdxl"}
TAESD_MAX_SIDE = 256  # px: a TAESD preview is shrunk to this (it decodes at the full image size)
JPEG_QUALITY = 90
CONTENT_TYPE = "image/jpeg"


@dataclass(frozen=True)
class LinearDecoder:
    """The linear latent → RGB approximation: `factors` (channels, 3) and `bias` (3), in [-1, 1] units."""

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = NO_BIAS
    label: str = "linear"

    def __call__(self, x0: torch.Tensor) -> np.ndarray:
        """x0 (batch, channels, h, w), scaled latents on any device and dtype → uint8 (batch, h, w, 3)."""
        weight = torch.tensor(self.factors, dtype=torch.float32, device=x0.device)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=x0.device)
        rgb = torch.einsum("bchw,cr->bhwr", x0.float(), weight) + bias
        return to_uint8(rgb)


class TaesdDecoder:
    """TAESD (diffusers' AutoencoderTiny): a tiny decoder of the scaled latents, sharper than the
    linear map; loaded once per worker on the render device."""

    label = "taesd"

    def __init__(self, folder: Path, device: str):
        from diffusers import AutoencoderTiny

        self.model = AutoencoderTiny.from_pretrained(folder, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> np.ndarray:
        decoder = self.model
        image = decoder.decode(x0.to(decoder.device, decoder.dtype)).sample  # (batch, 3, H, W) in [-1, 1]
        side = max(image.shape[-2:])
        if side > TAESD_MAX_SIDE:
            size = [max(1, round(n * TAESD_MAX_SIDE / side)) for n in image.shape[-2:]]
            image = torch.nn.functional.interpolate(image.float(), size=size, mode="area")
        return to_uint8(image.permute(0, 2, 3, 1))


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(…, 3) in [-1, 1] → uint8 on the CPU: clamp(-1, 1), (x + 1) * 127.5."""
    return ((rgb.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def family_decoder(family: str) -> LinearDecoder:
    """The published factors of a family's VAE (SD 1.x and 2.x share one VAE)."""
    if family == "sdxl":
        return LinearDecoder(SDXL_FACTORS, SDXL_BIAS, "sdxl")
    return LinearDecoder(SD1_FACTORS, NO_BIAS, "sd1")


def model_decoder(source: str) -> LinearDecoder | None:
    """Factors a model folder ships in its imagesite.json ("preview_factors": {"factors": [[r, g, b],
    one row per latent channel], "bias": [r, g, b]}), e.g. the demo model's, fitted on its own VAE by
    bench/fit_preview_factors.py. None when it has none."""
    try:
        extra = json.loads((Path(source) / "imagesite.json").read_text())
    except (OSError, ValueError):
        return None
    fitted = extra.get("preview_factors")
    if not fitted:
        return None
    factors = tuple(tuple(float(v) for v in row) for row in fitted["factors"])
    bias = tuple(float(v) for v in fitted.get("bias", NO_BIAS))
    return LinearDecoder(factors, bias, "fitted")


@lru_cache(maxsize=4)
def preview_decoder(source: str, family: str, taesd_dir: str = "", device: str = "cpu") -> LinearDecoder | TaesdDecoder:
    """The decoder for a model's previews, made once per worker process: TAESD when `taesd_dir` holds
    the family's weights, else the model's own fitted factors, else the family's published ones."""
    folder = Path(taesd_dir) / TAESD_FOLDERS.get(family, "taesd") if taesd_dir else None
    if folder is not None and (folder / "config.json").is_file():
        try:
            return TaesdDecoder(folder, device)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("TAESD in %s could not be loaded (%s); previews use the linear factors", folder, exc)
    return model_decoder(source) or family_decoder(family)


def encode_preview(images: np.ndarray) -> bytes:
    """uint8 (batch, h, w, 3) → one JPEG with the batch's images side by side."""
    strip = np.concatenate(list(images), axis=1)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def estimate_x0(scheduler, output, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor | None:
    """The scheduler's estimate of the clean latents at this step (see the module docstring), or None."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    config = scheduler.config
    # (other schedulers built from a DPM-Solver config carry its algorithm_type too: check the solver)
    if hasattr(scheduler, "convert_model_output") and config.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++") \
            and getattr(scheduler, "model_outputs", None) and scheduler.model_outputs[-1] is not None:
        return scheduler.model_outputs[-1]
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None or float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        return None  # a sigma-scaled sample: the DDPM formula does not apply
    t = int(timestep.item() if torch.is_tensor(timestep) else timestep)
    alpha = alphas[min(max(t, 0), len(alphas) - 1)].to(sample.device, torch.float32).clamp(min=1e-8)
    sample, model_output = sample.float(), model_output.float()
    kind = config.get("prediction_type", "epsilon")
    if kind == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    if kind == "sample":
        return model_output
    return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()


PreviewSink = Callable[[bytes, int], None]  # (JPEG, step) → stores it where the pages can show it


class PreviewTap:
    """One job's previews: keeps each step's x0 estimate (`attach` to the job's scheduler) and, at most
    every `interval_s`, decodes it and hands a JPEG to `sink(jpeg, step)`. Never on the last step
    (the images come then). A preview that fails is logged and the job goes on without previews."""

    def __init__(self, decoder: Callable[[torch.Tensor], np.ndarray], sink: PreviewSink, interval_s: float = 0.5):
        self.decoder, self.sink, self.interval_s = decoder, sink, interval_s
        self.x0: torch.Tensor | None = None
        self.last = time.monotonic()  # the first preview comes `interval_s` after the job starts
        self.count = 0
        self.broken = False

    def attach(self, scheduler) -> None:
        """Wrap this job's scheduler's `step` (the renderer makes a fresh scheduler per job) to keep
        x0. functools.wraps keeps the signature the pipeline inspects for `eta` and `generator`."""
        original = scheduler.step

        @functools.wraps(original)
        def step(model_output, timestep, sample, *args, **kwargs):
            return_dict = kwargs.pop("return_dict", True)
            output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            self.x0 = None
            if not self.broken:
                try:
                    self.x0 = estimate_x0(scheduler, output, model_output, timestep, sample)
                except Exception:  # noqa: BLE001 - a preview must never stop a job
                    log.warning("no x0 estimate from %s; previews show the step's latents", type(scheduler).__name__, exc_info=True)
            return output if return_dict else (output.prev_sample,)

        scheduler.step = step

    def step_end(self, step: int, total: int, latents: torch.Tensor | None) -> None:
        """Called after step `step` of `total` with the step-end latents (the fallback when no x0)."""
        now = time.monotonic()
        if self.broken or step >= total or now - self.last < self.interval_s:
            return
        x0 = self.x0 if self.x0 is not None else latents
        if x0 is None:
            return
        self.last = now
        try:
            self.sink(encode_preview(self.decoder(x0.detach())), step)
            self.count += 1
        except Exception:  # noqa: BLE001 - a preview must never stop a job
            self.broken = True
            log.warning("live preview failed at step %s; no more previews for this job", step, exc_info=True)
