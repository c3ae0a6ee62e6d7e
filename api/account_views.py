"""API views about the signed-in user: usage and limits, webhook secret
and deliveries; and the JSON 404 for unknown API paths."""
from __future__ import annotations

from django.apps import apps
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import generics, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from imagesite import quotas

from . import serializers as s
from .errors import error_body
from .models import WebhookDelivery, WebhookSettings
from .views import OwnedViewSetMixin


# --- me ------------------------------------------------------------------------------------------
def _count(label: str, **filters) -> int:
    try:
        return apps.get_model(label).objects.filter(**filters).count()
    except LookupError:
        return 0


def usage_for(user) -> dict[str, int]:
    """What the user uses of each limit (counted as the services admit work), and their totals."""
    used = quotas.usage(user)
    return {
        "active_jobs": used["max_queued_jobs"],
        "generations_last_hour": used["generations_per_hour"],
        "photos_uploaded_last_hour": used["uploads_per_hour"],
        "trainings_last_day": used["trainings_per_day"],
        # By label: the api app sits below the apps whose rows it counts.
        "generations_total": _count("generation.Generation", owner=user),
        "images_total": _count("generation.GeneratedImage", generation__owner=user),
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
            "limits": quotas.limits_for(user),
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
