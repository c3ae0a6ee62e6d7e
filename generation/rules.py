"""Validation rules for generation settings. Forms and API serializers both call these, so each rule
lives in one place (STYLE.md habit 4). Each raises django's ValidationError with a readable message."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError

from .modelinfo import ModelInfo, describe_model
from .models import HiresUpscaler
from .prompt_syntax import check_prompt

MAX_PROMPT_CHARS = 2000
STEPS_RANGE = (1, 150)
GUIDANCE_RANGE = (0.0, 30.0)
NUM_IMAGES_RANGE = (1, 4)


def current_model() -> ModelInfo:
    return describe_model(settings.IMAGESITE_MODEL)


def validate_size(value: int, info: ModelInfo | None = None) -> int:
    info = info or current_model()
    if value % 8:
        raise ValidationError(f"Must be a multiple of 8 (got {value}).")
    if not info.min_size <= value <= info.max_size:
        raise ValidationError(f"Must be between {info.min_size} and {info.max_size} pixels for {info.name}.")
    return value


def validate_subject_family(subject, base_model) -> None:
    """A subject's checkpoint fits only bases of the family it was trained on (a LoRA's shapes are
    its base's). Runs from before bases were recorded carry no family and are let through."""
    run = subject.trained_run()
    family = run.base_family if run is not None else ""
    if family and base_model.family and family != base_model.family:
        trained = (run.base_model.family_label if run.base_model_id else "") or family
        raise ValidationError(
            f"“{subject.name}” was trained on {run.base_model_name or 'a base'} ({trained}); “{base_model.name}” is "
            f"{base_model.family_label or base_model.family}. Pick a {trained} base model, or another subject."
        )


def validate_prompt(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValidationError("Describe the image you want.")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValidationError(f"Keep the prompt under {MAX_PROMPT_CHARS} characters.")
    return value


def prompt_problems(text: str) -> list[str]:
    """What in a prompt (AUTOMATIC1111 syntax) would not do what its author meant: bad weights,
    malformed `<lora:…>` tags, unsupported prompt editing. Empty when the prompt is fine. Whether
    each LoRA and embedding it names exists for its author is generation.prompt_files' business
    (it needs the owner and the base model)."""
    return check_prompt(text)


def mentions_token(text: str, token: str) -> bool:
    """Whether `text` has the subject's token as a word of its own (any case), as the tokenizer sees it."""
    import re

    return re.search(rf"\b{re.escape(token)}\b", text, flags=re.IGNORECASE) is not None


def validate_subject_in_prompt(prompt: str, token: str) -> None:
    if not mentions_token(prompt, token):
        raise ValidationError(f"Put the subject's token “{token}” in the prompt, e.g. “a photo of {token} …”.")


# --- img2img, inpainting and hires fix ---------------------------------------------------------------
STRENGTH_RANGE = (0.0, 1.0)
MASK_BLUR_RANGE = (0, 64)
HIRES_SCALE_RANGE = (1.0, 4.0)
HIRES_STEPS_RANGE = (0, STEPS_RANGE[1])
HIRES_UPSCALERS = tuple(HiresUpscaler.values)  # the model field's choices


def validate_strength(value: float, steps: int, *, what: str = "strength") -> None:
    """A denoising strength within 0-1 that runs at least one of `steps` (img2img runs
    int(steps × strength) of them, as diffusers and AUTOMATIC1111 do)."""
    low, high = STRENGTH_RANGE
    if not low <= value <= high:
        raise ValidationError(f"The {what} must be between {low:g} and {high:g} (got {value:g}).")
    if int(steps * value) < 1:
        raise ValidationError(f"With {steps} steps a {what} of {value:g} changes nothing (int(steps × {what}) is 0); raise it or the steps.")


def validate_hires(scale: float, upscaler: str, steps: int, width: int, height: int, info: ModelInfo) -> dict[str, list[str]]:
    """Hires fix's problems by field: the scale within 1-4, an upscaler offered and the upscaled size
    within the model's limits; `steps` the hires steps. Empty when fine or off (scale 1)."""
    from .inputs import hires_size

    errors: dict[str, list[str]] = {}
    low, high = HIRES_SCALE_RANGE
    if not low <= scale <= high:
        errors["hires_scale"] = [f"Between {low:g} (off) and {high:g}."]
    elif scale > 1:
        out_w, out_h = hires_size(width, height, scale)
        if max(out_w, out_h) > info.max_size:
            errors["hires_scale"] = [f"{width}×{height} upscaled {scale:g}× is {out_w}×{out_h}; {info.name} goes up to {info.max_size} px a side."]
    if upscaler not in HIRES_UPSCALERS:
        errors["hires_upscaler"] = [f"One of {', '.join(HIRES_UPSCALERS)}."]
    if not HIRES_STEPS_RANGE[0] <= steps <= HIRES_STEPS_RANGE[1]:
        errors["hires_steps"] = [f"Between {HIRES_STEPS_RANGE[0]} (as many as steps) and {HIRES_STEPS_RANGE[1]}."]
    return errors
