"""Validation rules for subjects and training options. training.services calls them for every edge
(the pages' forms and the API's serializers pass on what was sent); the serializers read the ranges
and patterns here for the schema and their field types."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from generation.modelinfo import model_kind
from generation.rules import mentions_token

from .dreambooth.options import check_options, method_defaults

# Rare single CLIP tokens (vocabulary ids above 45,000), the DreamBooth habit ("sks").
SUGGESTED_TOKENS = ("sks", "ohwx", "bnha", "yql", "kprs", "icz", "izz", "evp")
# CLIP's BPE vocabulary is ordered by frequency: a whole word among the first entries is an
# ordinary word, which the model already means something by.
ORDINARY_WORD_MAX_ID = 30_000
TOKEN_RE = re.compile(r"^[a-z][a-z0-9]{1,15}$")
FALLBACK_ORDINARY = {"a", "an", "the", "photo", "person", "man", "woman", "dog", "cat", "of", "on", "in", "shape"}

STEPS_RANGE = (1, 5000)
RANK_RANGE = (1, 128)
LEARNING_RATE_RANGE = (1e-7, 1e-2)
CLASS_IMAGES_RANGE = (0, 1000)


@lru_cache(maxsize=4)
def _vocab(model_source: str) -> dict[str, int]:
    from generation.families import detect_family
    from generation.errors import GenerationError

    folders = [Path(model_source)]
    try:  # a single file's tokenizer is its family's shipped one
        folders.append(detect_family(model_source).config_dir)
    except GenerationError:
        pass
    for folder in folders:
        path = folder / "tokenizer" / "vocab.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def is_ordinary_word(word: str) -> bool:
    vocab = _vocab(settings.IMAGESITE_MODEL)
    if not vocab:
        return word in FALLBACK_ORDINARY
    token_id = vocab.get(f"{word}</w>")
    return token_id is not None and token_id < ORDINARY_WORD_MAX_ID


def validate_token(value: str, *, taken: set[str] = frozenset()) -> str:
    """The token itself: a rare word of the right shape. `taken` (the owner's tokens) only keeps the
    suggestion in the refusal free; whether the token is taken is training.services.create_subject's
    check (stored state: a conflict)."""
    value = value.strip().lower()
    if not TOKEN_RE.match(value):
        raise ValidationError("Use 2-16 lowercase letters or digits, starting with a letter (e.g. sks).")
    if is_ordinary_word(value):
        raise ValidationError(f"“{value}” is an ordinary word the model already knows; pick a rare token such as {suggest_token(taken)}.")
    return value


def suggest_token(taken: set[str]) -> str:
    for token in SUGGESTED_TOKENS:
        if token not in taken:
            return token
    return f"sks{len(taken)}"


CLASS_NOUN_RE = re.compile(r"^[a-z][a-z \-]*$")
CLASS_NOUN_MAX_LENGTH = 40


def validate_class_noun(value: str) -> str:
    value = " ".join(value.strip().lower().split())
    if not value or len(value) > CLASS_NOUN_MAX_LENGTH or not CLASS_NOUN_RE.match(value):
        raise ValidationError('Say what the subject is in a word or two, e.g. "person", "dog", "shape".')
    return value


CAPTION_MAX_LENGTH = 200


def validate_caption(value: str, *, token: str) -> str:
    """A photo's training caption: blank (training then says "a photo of <token> <class>"), or text
    that names the subject by its token, so the model ties what the photo shows to the token."""
    value = " ".join(value.split())
    if not value:
        return ""
    if len(value) > CAPTION_MAX_LENGTH:
        raise ValidationError(f"Keep the caption to {CAPTION_MAX_LENGTH} characters (it has {len(value)}).")
    if not mentions_token(value, token):
        raise ValidationError(f"Name the subject with its token “{token}”, e.g. “a {token} dog on a beach”.")
    return value


def untrainable_reason(base_model) -> str | None:
    """Why subjects cannot be trained on this BaseModel, or None: training needs the base's files
    here (not a hub id) and a text-to-image base. The Train form offers only bases without a reason;
    training.services refuses the others with it."""
    if model_kind(base_model.path) == "hub":
        return f"Training needs the base model's files on this server; “{base_model.name}” is a hub id."
    if base_model.info().inpainting:
        return (f"“{base_model.name}” is an inpainting model; train the subject on a text-to-image base of its family "
                "and it works with this one too.")
    return None


# --- training options ---------------------------------------------------------------------------
PRIOR_LOSS_WEIGHT_RANGE = (0.0, 10.0)
SEED_RANGE = (0, 2**31 - 1)
PRIOR_TARGETS = ("base", "images")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
TRAINING_METHODS = ("lora", "full")  # models.TrainingMethod's values
# What a user may choose for a run, each with its type and its range or choices; every other
# TrainingOptions field is the model's, the method's or the training machine's to decide.
TRAINING_OPTION_RULES: dict[str, tuple[type, tuple]] = {
    "steps": (int, STEPS_RANGE),
    "learning_rate": (float, LEARNING_RATE_RANGE),
    "lora_rank": (int, RANK_RANGE),
    "train_text_encoder": (bool, ()),
    "prior_preservation": (bool, ()),
    "num_class_images": (int, CLASS_IMAGES_RANGE),
    "prior_loss_weight": (float, PRIOR_LOSS_WEIGHT_RANGE),
    "prior_target": (str, PRIOR_TARGETS),
    "train_token_embedding": (bool, ()),
    "gradient_checkpointing": (bool, ()),
    "mixed_precision": (str, MIXED_PRECISIONS),
    "use_8bit_adam": (bool, ()),
    "seed": (int, SEED_RANGE),
}


def clean_training_options(method: str, chosen: dict, *, base_source: str | None = None) -> dict:
    """Judge a user's choices for a training run; return the options to store in `TrainingRun.options`.

    `training.services.start_training` calls this for every edge (the training form, the API's start
    serializer), with the method and ONLY the options the user gave: never fill in defaults first. An option left out, or
    given as None, stays out of the result, and the worker decides it for the chosen method and its
    own GPU (`training.dreambooth.devices.default_options_for`): e.g. a full fine-tune's lower
    learning rate, or fp16 only where there is a GPU. Values come with their Python types (int,
    float, bool, str), as form and serializer fields clean them; the names are TRAINING_OPTION_RULES'.

    Cross-field rules judge the choices together with the defaults they leave in place for the base
    model at `base_source` (default: IMAGESITE_MODEL) (prior
    preservation is on by default and needs at least one class image). Torch-free: the model's
    defaults come from its config files (`method_defaults`).

    Raises ValidationError with a dict keyed by field ("method", an option's name, or an unknown
    name the caller passed), each with a list of messages. Returns {name: value} of the chosen
    options, in TRAINING_OPTION_RULES' order: {} when nothing was chosen.
    """
    if method not in TRAINING_METHODS:
        raise ValidationError({"method": f"Choose one of: {', '.join(TRAINING_METHODS)}."})
    errors: dict[str, list[str]] = {}
    for name in chosen:
        if name not in TRAINING_OPTION_RULES:
            errors.setdefault(name, []).append("Not an option a run can be given.")
    options = {name: chosen[name] for name in TRAINING_OPTION_RULES if chosen.get(name) is not None}
    for name, value in options.items():
        message = _option_problem(value, *TRAINING_OPTION_RULES[name])
        if message:
            errors.setdefault(name, []).append(message)
    if errors:
        raise ValidationError(errors)

    resolved = method_defaults(base_source or settings.IMAGESITE_MODEL, method, **options)
    if resolved.prior_preservation and resolved.num_class_images < 1:
        field = "num_class_images" if "num_class_images" in options else "prior_preservation"
        raise ValidationError({field: "Prior preservation needs at least one class image."})
    try:  # what the training module itself would refuse (the rules above should leave nothing)
        check_options(resolved)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return options


def _option_problem(value: object, kind: type, allowed: tuple) -> str | None:
    """Why `value` is not a valid option of that type and range (or choices), or None."""
    # bool is an int to Python, but True steps or a learning rate of False are mistakes.
    if kind is bool:
        return None if isinstance(value, bool) else "Must be true or false."
    if kind is str:
        return None if value in allowed else f"Choose one of: {', '.join(allowed)}."
    numbers = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numbers):
        return "Must be a whole number." if kind is int else "Must be a number."
    low, high = allowed
    if not low <= value <= high:
        return f"Must be from {low:g} to {high:g}."
    return None
