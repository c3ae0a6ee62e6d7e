"""OpenAPI additions: the token security scheme, the error responses every operation can give, the
rules of described fields, and ids declared as the server reads them."""
from __future__ import annotations

import copy

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension

from .views import ID_SCHEMA

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
    "400": "Invalid input: `errors` names each field at fault (unknown fields too), or a body that cannot be parsed "
           "(malformed or too deeply nested JSON, too many form fields or files).",
    "401": "Not signed in, or the token is invalid or revoked.",
    "403": "CSRF check failed (session authentication only).",
    "404": "No such object among yours.",
    "405": "Method not allowed.",
    "413": "The request body is over the size limit (2.5 MB of data; uploaded files are not counted).",
    "415": "Unsupported media type (e.g. JSON where a multipart upload is expected).",
    "409": "Refused because of what is stored now (e.g. already training, a name you already use); it may succeed later.",
    "429": "A limit was reached; the Retry-After header says when to try again.",
}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A token from the account page: `Authorization: Bearer isk_…`."}


class DescribedCharFieldSchema(OpenApiSerializerFieldExtension):
    """A CharField's usual schema plus the rule it states (api.serializers.DescribedCharField)."""

    target_class = "api.serializers.DescribedCharField"

    def map_serializer_field(self, auto_schema, direction):
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        return {**schema, **self.target.schema} if direction == "request" else schema  # a rule on input


def json_bodies_only(result: dict) -> dict:
    """An operation that takes JSON is documented with JSON alone, and as refusing unknown fields. DRF also parses a form encoding
    of the same fields (a convenience kept for curl -d), but a form cannot say null, a number or
    true, so the JSON schema is no contract for it. Uploads keep theirs: multipart only, or multipart
    declared with a schema of its own beside the JSON one (a generation's input image and mask)."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                json_schema = content["application/json"].get("schema", {})
                content.pop("application/x-www-form-urlencoded", None)
                form_schema = content.get("multipart/form-data", {}).get("schema")
                if form_schema == json_schema:  # the same fields as a form: documented by the JSON alone
                    content.pop("multipart/form-data")
                elif form_schema is not None:  # the JSON fields' rules, plus the files; no nulls
                    _form_like_json(result, form_schema, json_schema)
                    _refuse_unknown_fields(result, form_schema)
                _refuse_unknown_fields(result, json_schema)
    return result


def _form_like_json(result: dict, form_schema: dict, json_schema: dict) -> None:
    """The multipart body of an operation that also takes JSON: each field the JSON body has, with
    its rules (patterns, ranges), the file fields besides; none nullable, since a form cannot say
    null (a field is left out instead)."""
    schemas = result.get("components", {}).get("schemas", {})
    form = schemas.get(form_schema.get("$ref", "").rpartition("/")[2], {})
    json_fields = schemas.get(json_schema.get("$ref", "").rpartition("/")[2], {}).get("properties", {})
    for name, field in form.get("properties", {}).items():
        if name in json_fields:
            field.clear()
            field.update(copy.deepcopy(json_fields[name]))
        field.pop("nullable", None)
        if "oneOf" in field:  # drf-spectacular's nullable enums: [enum, NullEnum]
            field["oneOf"] = [choice for choice in field["oneOf"] if not choice.get("$ref", "").endswith("/NullEnum")]


def _refuse_unknown_fields(result: dict, schema: dict) -> None:
    # Every JSON input is an api.serializers.StrictSerializer: unknown fields are a 400.
    name = schema.get("$ref", "").rpartition("/")[2]
    component = result.get("components", {}).get("schemas", {}).get(name)
    if component is not None and component.get("type") == "object":
        component["additionalProperties"] = False


def declare_ids(result: dict, generator, request, public) -> dict:
    """Path ids are digits in the URL patterns (`[0-9]+`); say what the server reads them as: an
    integer from 1, so a client knows 0 or -1 can never name anything (they are 404s)."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter.get("schema", {}).get("pattern") == "^[0-9]+$":
                    parameter["schema"] = dict(ID_SCHEMA)
    return result


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
    return json_bodies_only(declare_ids(result, generator, request, public))  # one hook in settings for all
