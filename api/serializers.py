"""Serializer pieces every app's API shares (links, progress, strict input), and the account's own
serializers (usage, limits, webhooks). Each app keeps its serializers in its own `serializers.py`."""
from __future__ import annotations

import difflib
from collections.abc import Mapping

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
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


class StrictSerializer(serializers.Serializer):
    """Input that names every field it does not know: `{"negtive_prompt": …}` is a 400 that says so,
    never a setting silently ignored."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            known = [name for name, field in self.fields.items() if not field.read_only]
            unknown = sorted(set(data) - set(known))
            if unknown:
                errors = {}
                for name in unknown:
                    close = difflib.get_close_matches(str(name), known, n=1)
                    errors[str(name)] = [f"Unknown field. Did you mean “{close[0]}”?" if close else
                                         f"Unknown field. Known fields: {', '.join(known)}."]
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def form_errors(form) -> dict[str, list[str]]:
    """A Django form's errors in the API's field-error shape (`__all__` → non_field_errors)."""
    return {("non_field_errors" if name == "__all__" else name): list(messages) for name, messages in form.errors.items()}


# --- me, webhooks ------------------------------------------------------------------------------
class LimitsSerializer(serializers.Serializer):
    generations_per_hour = serializers.IntegerField()
    uploads_per_hour = serializers.IntegerField()
    trainings_per_day = serializers.IntegerField()
    max_queued_jobs = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    active_jobs = serializers.IntegerField(help_text="Queued or running generations and training runs.")
    generations_last_hour = serializers.IntegerField()
    photos_uploaded_last_hour = serializers.IntegerField()
    trainings_last_day = serializers.IntegerField()
    generations_total = serializers.IntegerField()
    images_total = serializers.IntegerField()
    subjects_total = serializers.IntegerField()


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)
    usage = UsageSerializer(read_only=True)
    limits = LimitsSerializer(read_only=True)
    default_webhook_url = serializers.CharField(max_length=500, allow_blank=True, required=False, help_text="Used for jobs that name no webhook_url.")
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
