"""Serializer pieces every app's API shares (links, progress, strict input), and the account's own
serializers (usage, limits, webhooks). Each app keeps its serializers in its own `serializers.py`."""
from __future__ import annotations

import difflib
from collections.abc import Mapping

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from django.http import QueryDict
from django.urls import reverse
from rest_framework import serializers

from . import webhooks
from .models import WebhookDelivery


def absolute(context: dict, path: str) -> str:
    """An absolute URL when serving a request; the path alone elsewhere (webhook payloads)."""
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


@extend_schema_field(OpenApiTypes.URI)
class LinkField(serializers.Field):
    """Read-only URL of a named route taking the object's pk."""

    def __init__(self, route: str, **kwargs):
        self.route = route
        kwargs.update(read_only=True, source="*")
        super().__init__(**kwargs)

    def to_representation(self, obj) -> str:
        return absolute(self.context, reverse(self.route, args=[obj.pk]))


class ProgressSerializer(serializers.Serializer):
    step = serializers.IntegerField(source="progress_step")
    total = serializers.IntegerField(source="progress_total")
    percent = serializers.IntegerField(source="progress_percent")
    eta_seconds = serializers.FloatField(allow_null=True)


# Input that names every field it does not know: `{"negtive_prompt": …}` is a 400 that says so, never
# a setting silently ignored. (A comment: a docstring would describe every request in the schema.)
class StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            errors = {**self._unknown_field_errors(data), **self._json_type_errors(data)}
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)

    def _unknown_field_errors(self, data: Mapping) -> dict[str, list[str]]:
        writable = [name for name, field in self.fields.items() if not field.read_only]
        errors = {}
        for name in sorted(set(data) - set(writable), key=str):
            close = difflib.get_close_matches(str(name), writable, n=1)
            if name in self.fields:
                errors[str(name)] = ["Read-only: it cannot be set."]
            else:
                errors[str(name)] = [f"Unknown field. Did you mean “{close[0]}”?" if close else
                                     f"Unknown field. Known fields: {', '.join(writable)}."]
        return errors

    def _json_type_errors(self, data: Mapping) -> dict[str, list[str]]:
        # DRF coerces: true is 1.0 to a FloatField (float(True)), 0 is "0" to a CharField. A JSON body
        # says its types, so they must be the schema's. (A form body is all strings: DRF parses those.)
        is_json = not isinstance(data, QueryDict)
        errors = {}
        for name, field in self.fields.items():
            value = data.get(name)
            if value is None or field.read_only:
                continue
            if isinstance(field, (serializers.FloatField, serializers.IntegerField, serializers.DecimalField)):
                if isinstance(value, bool) or (is_json and isinstance(value, str)):
                    errors[name] = ["A number is required."]
            elif isinstance(field, serializers.BooleanField) and is_json and not isinstance(value, bool):
                errors[name] = ["Must be true or false."]
            elif isinstance(field, serializers.CharField) and is_json and not isinstance(value, str):
                errors[name] = ["A string is required."]
        return errors


class DescribedCharField(serializers.CharField):
    """A CharField whose OpenAPI schema also states `schema` (a pattern, a format): the rule a form or
    a validate_<field> checks, read from its rules module, so clients know it before they send. The
    text is taken as sent: whitespace around it is refused, not trimmed, so lengths and patterns in
    the schema count exactly what the client sent."""

    def __init__(self, *, schema: dict, **kwargs):
        self.schema = schema
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> str:
        value = super().to_internal_value(data)
        if not self.trim_whitespace and value != value.strip():
            raise serializers.ValidationError("Remove the spaces or line breaks around it." if value.strip() else "This field may not be blank.")
        return value


# What check_webhook_url accepts, as far as a pattern can say: blank, or http(s)://host[:port][/…]
# without credentials (whether the host resolves to a public address is the server's to find out).
_PORT = "([0-9]{0,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# A character Python's str.strip() keeps (what DRF judges blank by): not JSON Schema's \s, and not the
# separators \x1c-\x1f and \x85, which Python counts as whitespace too; \ufeff is \s there, not here.
NON_SPACE = r"(?:[^\s\x1c-\x1f\x85]|\ufeff)"
WEBHOOK_URL_SCHEMA = {"pattern": rf"^([Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:{_PORT})?([/?#]([\s\S]*{NON_SPACE})?)?)?$"}
# Text that is not blank and has no whitespace around it.
TEXT_SCHEMA = {"pattern": rf"^{NON_SPACE}([\s\S]*{NON_SPACE})?$"}


def form_errors(form) -> dict[str, list[str]]:
    """A Django form's errors in the API's field-error shape (`__all__` → non_field_errors)."""
    return {("non_field_errors" if name == "__all__" else name): list(messages) for name, messages in form.errors.items()}


# --- me, webhooks ------------------------------------------------------------------------------
class LimitsSerializer(serializers.Serializer):
    generations_per_hour = serializers.IntegerField()
    uploads_per_hour = serializers.IntegerField()
    trainings_per_day = serializers.IntegerField()
    max_queued_jobs = serializers.IntegerField()
    gpu_seconds_per_day = serializers.IntegerField(help_text="GPU time a day, in seconds; 0: no cap.")


class UsageSerializer(serializers.Serializer):
    active_jobs = serializers.IntegerField(help_text="Queued or running generations and training runs.")
    generations_last_hour = serializers.IntegerField()
    photos_uploaded_last_hour = serializers.IntegerField()
    trainings_last_day = serializers.IntegerField()
    gpu_seconds_last_day = serializers.IntegerField(help_text="GPU time your jobs of the last 24 hours used (a batch's shared).")
    generations_total = serializers.IntegerField()
    images_total = serializers.IntegerField()
    subjects_total = serializers.IntegerField()


class MeSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)
    usage = UsageSerializer(read_only=True)
    limits = LimitsSerializer(read_only=True)
    default_webhook_url = DescribedCharField(schema=WEBHOOK_URL_SCHEMA, max_length=500, allow_blank=True, required=False, help_text="Used for jobs that name no webhook_url.")
    webhook_deliveries_url = serializers.URLField(read_only=True)

    def validate_default_webhook_url(self, value: str) -> str:
        return webhooks.check_webhook_url(value) if value else value


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(read_only=True, help_text="Key of the HMAC-SHA256 in X-Imagesite-Signature.")
    signature_header = serializers.CharField(read_only=True, default=webhooks.SIGNATURE_HEADER)
    timestamp_header = serializers.CharField(read_only=True, default=webhooks.TIMESTAMP_HEADER)


class WebhookAttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    duration_ms = serializers.IntegerField()


class WebhookDeliverySerializer(serializers.ModelSerializer):
    url = LinkField("api-webhook-delivery-detail")
    target_url = serializers.CharField(source="url", read_only=True, help_text="Where the payload is POSTed.")
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "url", "event", "target_url", "status", "attempts", "attempt_log", "next_attempt_at", "created_at", "delivered_at", "payload"]
        read_only_fields = fields
