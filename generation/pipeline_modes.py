"""img2img, inpainting and hires fix on the warm base pipeline (worker side; no Django).

The img2img and inpainting pipelines are built from the loaded base with diffusers' `from_pipe`: the
same UNet, VAE and text encoders (no second copy of the weights), made once per loaded base and
handed the job's scheduler at each call. What AUTOMATIC1111 does, step by step:

- img2img: the input is resized (Lanczos) to the job's size when they differ, encoded, noised to
  `strength` and denoised for int(steps × strength) steps. "Upscale" on a gallery image is this at a
  larger size with a low strength.
- inpainting: the mask (255 = repaint) is blurred as A1111 blurs it (a Gaussian of sigma `mask_blur`
  px of the input, kernel 2·int(2.5·sigma + 0.5) + 1, across then down) and resized to the job; the
  latents outside it (rounded at the latents' size) are reset to the noised input at every step
  (diffusers' inpaint pipeline with a regular checkpoint), and the decoded result is pasted over the
  input through the blurred mask doubled (A1111's mask_for_overlay), so pixels outside it are the
  input's own. An inpainting checkpoint (UNet with 9 input channels) gets the masked image as its
  extra input; it also draws text-to-image and img2img through the inpaint pipeline (a grey image
  under a full mask, as A1111 conditions such models).
- hires fix: a first pass at the job's size; its latents upscaled (bilinear, A1111's "Latent") or
  its decoded images upscaled with Lanczos and re-encoded; then an img2img pass at `hires_strength`
  for `hires_steps` (0: the job's steps), with fresh noise from the same seeds; a strength that
  leaves no step (int(steps × strength) = 0) upscales only, as A1111 does at denoising 0.

Progress counts both passes as one job: step k of the second pass is reported as first-pass steps + k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from PIL import Image

from .families import INPAINT_CHANNELS

if TYPE_CHECKING:
    from .pipeline import RenderSettings

StepHook = Callable[[int, int, Any], None]  # (step so far in the job, total steps of the job, latents)


@dataclass(frozen=True)
class ImageInputs:
    """A job's decoded inputs: an RGB `image` (any size) and an "L" `mask` of the same size
    (255 = repaint, 0 = keep), either None."""

    image: Image.Image | None = None
    mask: Image.Image | None = None


def denoising_steps(steps: int, strength: float) -> int:
    """Steps an img2img pass of `steps` at `strength` runs: diffusers' (and A1111's) int(steps × strength)."""
    return min(int(steps * strength), steps)


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of sigma `blur` px across, then down (cv2, as A1111 calls it)."""
    if blur <= 0:
        return mask
    import cv2

    kernel = 2 * int(2.5 * blur + 0.5) + 1
    array = np.array(mask)
    array = cv2.GaussianBlur(array, (kernel, 1), blur)
    array = cv2.GaussianBlur(array, (1, kernel), blur)
    return Image.fromarray(array)


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (width, height): resized with Lanczos when it differs (masks stay "L")."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


class ModePipes:
    """The base pipeline's img2img and inpaint siblings, built on first use with `from_pipe`."""

    def __init__(self, base):
        self.base = base
        self._img2img = None
        self._inpaint = None
        # An inpainting checkpoint: every job goes through the inpaint pipeline (txt2img can't feed 9 channels).
        self.inpainting_model = int(base.unet.config.in_channels) == INPAINT_CHANNELS

    def img2img(self):
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = _quiet(AutoPipelineForImage2Image.from_pipe(self.base))
        self._img2img.scheduler = self.base.scheduler  # the job's sampler (the renderer sets it per job)
        return self._img2img

    def inpaint(self):
        if self._inpaint is None:
            from diffusers import AutoPipelineForInpainting

            self._inpaint = _quiet(AutoPipelineForInpainting.from_pipe(self.base))
        self._inpaint.scheduler = self.base.scheduler
        return self._inpaint


def blank_conditioning(size: tuple[int, int]) -> dict:
    """The inpaint pipeline's inputs for text-to-image on an inpainting checkpoint, as A1111 conditions
    one: a mid-grey image (0.5) entirely under the mask, denoised from pure noise (strength 1).
    `size` is (width, height) px."""
    return {"image": Image.new("RGB", size, (127, 127, 127)), "mask_image": Image.new("L", size, 255), "strength": 1.0}


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


class JobSteps:
    """Counts steps across the passes of one job and builds each pass's `callback_on_step_end`."""

    def __init__(self, hook: StepHook, planned_later: list[int]):
        self.hook, self.done, self.later = hook, 0, list(planned_later)

    def callback(self):
        def step_end(pipe, step: int, timestep, kwargs: dict) -> dict:
            total = self.done + pipe.num_timesteps + sum(self.later)
            self.hook(self.done + step + 1, total, kwargs.get("latents"))
            return kwargs

        return step_end

    def pass_finished(self, pipe) -> None:
        self.done += pipe.num_timesteps
        if self.later:
            self.later.pop(0)


def render(pipes: ModePipes, s: "RenderSettings", inputs: ImageInputs, embeds: dict, seeds: list[int], hook: StepHook) -> list[Image.Image]:
    """Run one job's passes; returns `s.num_images` RGB images at s.output_size. `embeds` are the
    encoded prompts (prompt_embeds.encode_prompt), `seeds` one per image (CPU generators), `hook`
    gets (step, total, latents) after every step of every pass and may raise to cancel."""
    hires = s.hires_scale > 1
    steps = JobSteps(hook, [denoising_steps(s.hires_steps or s.steps, s.hires_strength)] if hires else [])
    size = (s.width, s.height)
    common = dict(**embeds, guidance_scale=s.guidance_scale, num_images_per_prompt=s.num_images,
                  generator=_generators(seeds), callback_on_step_end=steps.callback())
    first_output = "latent" if hires and s.hires_upscaler == "latent" else "pil"
    image = fit(inputs.image, size) if inputs.image is not None else None
    # A1111: blurred at the input's own size, then resized; the overlay uses it doubled (clipped), so
    # only its outer fringe blends and the inside is all generated.
    mask = fit(blur_mask(inputs.mask, s.mask_blur), size) if inputs.mask is not None else None

    if mask is not None or pipes.inpainting_model:
        pipe = pipes.inpaint()
        drawn = blank_conditioning(size) if image is None else dict(
            image=image, mask_image=mask if mask is not None else Image.new("L", size, 255), strength=s.strength)
        result = pipe(**common, **drawn, width=s.width, height=s.height, num_inference_steps=s.steps, output_type=first_output)
    elif image is not None:
        pipe = pipes.img2img()
        result = pipe(**common, image=image, strength=s.strength, num_inference_steps=s.steps, output_type=first_output)
    else:
        pipe = pipes.base
        result = pipe(**common, width=s.width, height=s.height, num_inference_steps=s.steps, output_type=first_output)
    steps.pass_finished(pipe)
    images = result.images
    if mask is not None and first_output == "pil":  # pixels outside the mask are the input's own
        overlay = mask.point(lambda v: min(255, 2 * v))
        images = [Image.composite(out, image, overlay) for out in images]
    if hires:
        images = _hires_pass(pipes, s, images, embeds, seeds, steps)
    return list(images)


def _hires_pass(pipes: ModePipes, s: "RenderSettings", first, embeds: dict, seeds: list[int], steps: JobSteps) -> list[Image.Image]:
    """A1111's second pass: upscale the first pass (latents bilinearly, or images with Lanczos) to
    s.output_size and refine it with img2img at hires_strength."""
    width, height = s.output_size
    if s.hires_upscaler == "latent":
        factor = pipes.base.vae_scale_factor
        upscaled = torch.nn.functional.interpolate(first, size=(height // factor, width // factor), mode="bilinear", antialias=False)
    else:
        upscaled = [image.resize((width, height), Image.Resampling.LANCZOS) for image in first]
    if denoising_steps(s.hires_steps or s.steps, s.hires_strength) == 0:  # A1111: no denoising, an upscale only
        return _decode(pipes.base, upscaled) if s.hires_upscaler == "latent" else upscaled
    common = dict(**embeds, guidance_scale=s.guidance_scale, num_images_per_prompt=s.num_images, generator=_generators(seeds),
                  callback_on_step_end=steps.callback(), num_inference_steps=s.hires_steps or s.steps, strength=s.hires_strength)
    if pipes.inpainting_model:
        if s.hires_upscaler == "latent":  # the inpaint pipeline takes pixels: decode the upscaled latents
            upscaled = _decode(pipes.base, upscaled)
        pipe = pipes.inpaint()
        result = pipe(**common, image=upscaled, mask_image=Image.new("L", (width, height), 255), width=width, height=height)
    else:
        pipe = pipes.img2img()
        result = pipe(**common, image=upscaled)
    steps.pass_finished(pipe)
    return list(result.images)


def _decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


def _generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image (image i: seed + i): the same noise on every machine."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
