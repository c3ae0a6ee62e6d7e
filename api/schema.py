"""OpenAPI additions: the token security scheme and the error responses every operation can give."""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error has this shape. `errors` maps field names to messages (empty when no field is at fault).",
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string", "example": "invalid"},
        "detail": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["status", "code", "detail", "errors"],
    "example": {"status": 400, "code": "invalid", "detail": "Invalid input.", "errors": {"width": ["Must be a multiple of 8 (got 65)."]}},
}
ERROR_RESPONSES = {
    "400": "Invalid input: `errors` names each field at fault.",
    "401": "Not signed in, or the token is invalid or revoked.",
    "403": "CSRF check failed (session authentication only).",
    "404": "No such object among yours.",
    "405": "Method not allowed.",
    "415": "Unsupported media type (e.g. JSON where a multipart upload is expected).",
    "429": "A limit was reached; the Retry-After header says when to try again.",
}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A token from the account page: `Authorization: Bearer isk_…`."}


def add_error_responses(result: dict, generator, request, public) -> dict:
    """Document the one error shape on every operation, so clients (and schemathesis) can rely on it."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_RESPONSES.items():
                if code not in responses:
                    response = {"description": description, "content": ref}
                    if code == "429":
                        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
                    responses[code] = response
    return result
