"""Validation rules for generation settings. Forms and API serializers both call these, so each rule
lives in one place (STYLE.md habit 4). Each raises django's ValidationError with a readable message."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError

from .modelinfo import ModelInfo, describe_model
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
