"""A refusal because of what is stored now, not because the input is malformed: the subject is
already training, the name is taken, the photos are not ready yet. Services raise it as a Django
ValidationError with the code "conflict", so pages show it like any other refusal and the API
answers 409 (api.errors) instead of 400: the same request may succeed later."""
from __future__ import annotations

from django.core.exceptions import ValidationError

CONFLICT = "conflict"


def conflict(message: str, field: str | None = None) -> ValidationError:
    error = ValidationError(message, code=CONFLICT)
    return ValidationError({field: [error]}) if field else error


def is_conflict(exc: ValidationError) -> bool:
    """True when every message of `exc` is a conflict."""
    errors = [e for messages in exc.error_dict.values() for e in messages] if hasattr(exc, "error_dict") else exc.error_list
    return bool(errors) and all(e.code == CONFLICT for e in errors)
