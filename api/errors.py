"""One JSON shape for every API error:

    {"status": 400, "code": "invalid", "detail": "Invalid input.", "errors": {"prompt": ["…"]}}

`errors` maps field names to lists of messages (non-field errors under "non_field_errors"); it is
empty for errors that concern no field (401, 404, 405, 429...).
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import (
    PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent, TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from imagesite.conflicts import is_conflict
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


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "The request body is too large."


def _mb(size: int) -> str:
    return f"{size / 2**20:g} MB"


def refused_request(exc: SuspiciousOperation) -> exceptions.APIException:
    """Django's limits on a request body (DATA_UPLOAD_*), raised when the body is first read (by
    DRF's parsers, or by the CSRF check of a session request), as the API error that names the limit."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(f"The request body is larger than {_mb(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)} (files excepted).")
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ParseError(f"Too many form fields: at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}.", "too_many_fields")
    if isinstance(exc, TooManyFilesSent):
        return exceptions.ParseError(f"Too many files: at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} in one request.", "too_many_files")
    return exceptions.ParseError("Malformed request.", "bad_request")  # e.g. a broken multipart body


def exception_handler(exc, context):
    if isinstance(exc, SuspiciousOperation):  # only body limits reach here; any other is a 400 too
        exc = refused_request(exc)
    if isinstance(exc, QuotaExceeded):  # a service's limit: the same refusal the pages show
        body = error_body(429, "throttled", exc.message, {})
        return Response(body, status=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, DjangoValidationError) and is_conflict(exc):  # stored state, not the input: 409
        errors = _field_errors(as_serializer_error(exc))
        first = next(iter(m for messages in errors.values() for m in messages), "Conflict.")
        return Response(error_body(409, "conflict", first, errors), status=status.HTTP_409_CONFLICT)
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


def _error_for_request(request: HttpRequest, status_code: int, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, SuspiciousOperation):
        refused = refused_request(exception)
        status_code, code, detail = refused.status_code, refused.get_codes(), str(refused.detail)
    else:
        code, detail = {
            400: ("bad_request", "Malformed request."),
            403: ("permission_denied", "You do not have permission to do this."),
            404: ("not_found", "Not found."),
            500: ("server_error", "The server hit an error; it was logged."),
        }[status_code]
    return JsonResponse(error_body(status_code, code, detail), status=status_code)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


# Django's error handlers (imagesite/urls.py names them), for errors raised where no API view could
# answer: the one JSON shape under /api/, Django's own pages elsewhere.
def handler400(request: HttpRequest, exception: Exception | None = None):
    return _error_for_request(request, 400, exception) if _is_api(request) else defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None):
    return _error_for_request(request, 403) if _is_api(request) else defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None):
    return _error_for_request(request, 404) if _is_api(request) else defaults.page_not_found(request, exception)


def handler500(request: HttpRequest):
    return _error_for_request(request, 500) if _is_api(request) else defaults.server_error(request)


def not_found() -> Response:
    return Response(error_body(404, "not_found", "Not found."), status=status.HTTP_404_NOT_FOUND)
