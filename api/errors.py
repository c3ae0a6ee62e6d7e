"""One JSON shape for every API error:

    {"status": 400, "code": "invalid", "detail": "Invalid input.", "errors": {"prompt": ["…"]}}

`errors` maps field names to lists of messages (non-field errors under "non_field_errors"); it is
empty for errors that concern no field (401, 404, 405, 429...).
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from imagesite.quotas import QuotaExceeded


def _field_errors(detail) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    return {"non_field_errors": _flatten(detail)}


def _flatten(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [m for item in value for m in _flatten(item)]
    if isinstance(value, dict):  # nested serializer: "field.sub: message"
        return [f"{k}: {m}" for k, v in value.items() for m in _flatten(v)]
    return [str(value)]


def error_body(status_code: int, code: str, detail: str, errors: dict | None = None) -> dict:
    return {"status": status_code, "code": code, "detail": detail, "errors": errors or {}}


def exception_handler(exc, context):
    if isinstance(exc, QuotaExceeded):  # a service's limit: the same refusal the pages show
        body = error_body(429, "throttled", exc.message, {})
        return Response(body, status=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, DjangoValidationError):  # a shared rule raised outside a serializer field
        exc = exceptions.ValidationError(as_serializer_error(exc))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: let Django answer 500 and log it
    if isinstance(exc, exceptions.ValidationError):
        body = error_body(response.status_code, "invalid", "Invalid input.", _field_errors(exc.detail))
    else:
        if isinstance(exc, Http404):
            code, detail = "not_found", "Not found."
        elif isinstance(exc, PermissionDenied):
            code, detail = "permission_denied", "You do not have permission to do this."
        elif isinstance(exc, exceptions.APIException):
            codes = exc.get_codes()
            code = codes if isinstance(codes, str) else "error"
            detail = str(exc.detail) if not isinstance(exc.detail, (dict, list)) else "Error."
        else:
            code, detail = "error", "Error."
        body = error_body(response.status_code, code, detail)
    response.data = body
    return response


def not_found() -> Response:
    return Response(error_body(404, "not_found", "Not found."), status=status.HTTP_404_NOT_FOUND)
