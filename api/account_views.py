"""API views about the server and the signed-in user: the model, usage and limits, webhook secret
and deliveries; and the JSON 404 for unknown API paths."""
from __future__ import annotations

from datetime import timedelta

from django.apps import apps
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import generics, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation import rules
from generation.models import GeneratedImage, Generation
from generation.modelinfo import SCHEDULERS

from . import serializers as s
from .errors import error_body
from .models import WebhookDelivery, WebhookSettings, limits_for
from .throttles import active_job_count
from .views import OwnedViewSetMixin


# --- the model -----------------------------------------------------------------------------------
def model_description() -> dict:
    info = rules.current_model()
    return {
        "name": info.name,
        "kind": info.kind,
        "native_size": info.native_size,
        "defaults": info.defaults(),
        "limits": {
            "min_size": info.min_size, "max_size": info.max_size, "size_multiple_of": 8,
            "steps": list(rules.STEPS_RANGE), "guidance_scale": list(rules.GUIDANCE_RANGE),
            "num_images": list(rules.NUM_IMAGES_RANGE), "max_prompt_chars": rules.MAX_PROMPT_CHARS,
        },
        "schedulers": [{"id": key, "label": choice.label} for key, choice in SCHEDULERS.items()],
        "example_prompts": list(info.example_prompts),
    }


class ModelsView(APIView):
    @extend_schema(summary="What the server generates with: the model, its native size, defaults and limits", responses=s.ModelInfoSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(s.ModelInfoSerializer([model_description()], many=True).data)


# --- me ------------------------------------------------------------------------------------------
def _count(label: str, **filters) -> int:
    try:
        return apps.get_model(label).objects.filter(**filters).count()
    except LookupError:
        return 0


def usage_for(user) -> dict[str, int]:
    now = timezone.now()
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    return {
        "active_jobs": active_job_count(user),
        "generations_last_hour": Generation.objects.for_user(user).filter(created_at__gte=hour, training_run__isnull=True).count(),
        "photos_uploaded_last_hour": _count("training.SubjectPhoto", subject__owner=user, created_at__gte=hour),
        "trainings_last_day": _count("training.TrainingRun", subject__owner=user, created_at__gte=day),
        "generations_total": Generation.objects.for_user(user).count(),
        "images_total": GeneratedImage.objects.for_user(user).count(),
        "subjects_total": _count("training.Subject", owner=user),
    }


class MeView(generics.RetrieveUpdateAPIView):
    """The signed-in user: usage against limits, and the default webhook URL."""

    serializer_class = s.MeSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self) -> dict:
        user = self.request.user
        return {
            "id": user.pk,
            "username": user.get_username(),
            "usage": usage_for(user),
            "limits": limits_for(user),
            "default_webhook_url": WebhookSettings.for_user(user).default_url,
            "webhook_deliveries_url": self.request.build_absolute_uri(reverse("api-webhook-delivery-list")),
        }

    @extend_schema(summary="Your usage and limits")
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(summary="Set your default webhook URL", examples=[OpenApiExample("Set", value={"default_webhook_url": "https://example.com/hooks"}, request_only=True)])
    def patch(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "default_webhook_url" in serializer.validated_data:
            hooks = WebhookSettings.for_user(request.user)
            hooks.default_url = serializer.validated_data["default_webhook_url"]
            hooks.save(update_fields=["default_url"])
        return Response(self.get_serializer(self.get_object()).data)


class WebhookSecretView(APIView):
    """The key that signs your webhooks. POST makes a new one (the old one stops at once)."""

    def _answer(self, secret: str) -> Response:
        return Response(s.WebhookSecretSerializer({"secret": secret}).data)

    @extend_schema(summary="Your webhook signing secret", responses=s.WebhookSecretSerializer)
    def get(self, request: Request) -> Response:
        return self._answer(WebhookSettings.for_user(request.user).secret)

    @extend_schema(summary="Rotate your webhook signing secret", request=None, responses=s.WebhookSecretSerializer)
    def post(self, request: Request) -> Response:
        return self._answer(WebhookSettings.for_user(request.user).rotate_secret())


@extend_schema_view(
    list=extend_schema(summary="Webhook deliveries, newest first, with every attempt"),
    retrieve=extend_schema(summary="One webhook delivery and its attempts"),
)
class WebhookDeliveryViewSet(OwnedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = s.WebhookDeliverySerializer

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        if self.is_schema_request():
            return WebhookDelivery.objects.none()
        return WebhookDelivery.objects.for_user(self.request.user).order_by("-created_at", "-pk")


@csrf_exempt  # nothing to protect, and a CSRF 403 in HTML would hide the 404
def api_not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error shape, not Django's HTML 404 page."""
    return JsonResponse(error_body(404, "not_found", "Not found."), status=404)
