"""Validation rules for subjects and training options, shared by forms and API serializers."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from generation.rules import mentions_token

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
    for folder in (Path(model_source), Path(getattr(settings, "IMAGESITE_MODEL_CONFIG", ""))):
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
    value = value.strip().lower()
    if not TOKEN_RE.match(value):
        raise ValidationError("Use 2-16 lowercase letters or digits, starting with a letter (e.g. sks).")
    if is_ordinary_word(value):
        raise ValidationError(f"“{value}” is an ordinary word the model already knows; pick a rare token such as {suggest_token(taken)}.")
    if value in taken:
        raise ValidationError(f"You already use “{value}” for another subject.")
    return value


def suggest_token(taken: set[str]) -> str:
    for token in SUGGESTED_TOKENS:
        if token not in taken:
            return token
    return f"sks{len(taken)}"


def validate_class_noun(value: str) -> str:
    value = " ".join(value.strip().lower().split())
    if not value or len(value) > 40 or not re.match(r"^[a-z][a-z \-]*$", value):
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
