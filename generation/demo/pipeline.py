"""Assemble and save the demo model as a standard diffusers Stable Diffusion folder."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .configs import sampling_scheduler
from .data import COLOURS, IMAGE_SIZE, TRAIN_COMBOS, caption

EXAMPLE_PROMPTS: list[str] = [
    "a red circle on a blue background",
    "a yellow star on a purple background",
    "a white heart on a green background",
    "a blue triangle on an orange background",
    "a black square on a yellow background",
    "an orange diamond on a black background",
]

MODEL_DEFAULTS: dict = {
    "name": "imagesite demo (64 px shapes)",
    "width": IMAGE_SIZE,
    "height": IMAGE_SIZE,
    "steps": 20,
    "guidance_scale": 3.0,  # measured: 3 beat 4 and 7.5 on held-out colours (README)
    "scheduler": "dpmpp_2m",
    "example_prompts": EXAMPLE_PROMPTS,
    # What the model draws, for DreamBooth's prior preservation (training/dreambooth/). Training
    # captions only: the held-out combinations stay unseen, so benchmarks on them stay fair.
    "prior_prompts": [caption(*c) for c in TRAIN_COMBOS],
    # The plain backgrounds its captions name: an uploaded subject photo on one of them gets the
    # caption "a <token> <class> on a <colour> background" suggested (training/captions.py).
    "caption_backgrounds": {name: list(rgb) for name, rgb in COLOURS.items()},
}


def assemble(vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
             tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline (no safety checker) around the given CPU fp32 components."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_model_folder(pipe: StableDiffusionPipeline, out: Path,
                      save_tokenizer_fn=None, extra_defaults: dict | None = None) -> None:
    """Write ``pipe`` to ``out`` as safetensors in diffusers layout, plus ``imagesite.json``.

    ``save_tokenizer_fn(tokenizer, dir)`` replaces the tokenizer files written by save_pretrained
    (transformers 5 writes only tokenizer.json; we ship SD 1.x's vocab.json + merges.txt).
    """
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    if save_tokenizer_fn is not None:
        save_tokenizer_fn(pipe.tokenizer, out / "tokenizer")
    for config in out.glob("*/config.json"):  # parts loaded from disk record where from: not worth shipping
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    defaults = dict(MODEL_DEFAULTS)
    defaults.update(extra_defaults or {})
    (out / "imagesite.json").write_text(json.dumps(defaults, indent=2) + "\n", encoding="utf-8")
    # The live previews' latent->RGB factors are fitted on the VAE just saved: refit them (a changed
    # VAE makes the old ones wrong) with `python bench/fit_preview_factors.py --write`.
