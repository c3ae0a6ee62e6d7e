"""API views about the signed-in user: usage and limits, webhook secret
and deliveries, the data export; and the JSON 404 for unknown API paths."""
from __future__ import annotations

from django.apps import apps
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import exceptions, generics, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from imagesite import quotas
from imagesite.export import archive_response, latest_export, request_export
from imagesite.models import DataExport

from . import serializers as s
from .errors import error_body
from .models import WebhookDelivery, WebhookSettings
from .views import FileNegotiation, OwnedViewSetMixin


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
        "gpu_seconds_last_day": used["gpu_seconds_per_day"],
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


# --- your data export ------------------------------------------------------------------------------
class DataExportSerializer(serializers.ModelSerializer):
    progress = s.ProgressSerializer(source="*", read_only=True)
    expired = serializers.BooleanField(source="is_expired", read_only=True)
    download_url = serializers.SerializerMethodField(help_text="The zip while its link lasts (until `expires_at`); null before and after.")

    class Meta:
        model = DataExport
        fields = ["id", "status", "progress", "error", "created_at", "started_at", "finished_at", "expires_at", "expired",
                  "size_bytes", "download_url"]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_download_url(self, export: DataExport) -> str | None:
        return s.absolute(self.context, reverse("api-me-export-archive")) if export.is_downloadable else None


ERROR = {"$ref": "#/components/schemas/Error"}  # api.schema's one error shape


class ArchiveGone(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_code = "gone"


EXPORT_DESCRIPTION = (
    "One zip of everything you own: images (each PNG keeps its settings), subjects' photos and training runs' files, "
    "uploaded LoRAs and embeddings, and `jobs.json` (generations with their settings, subjects, training runs). "
    "Made by a worker: poll GET until `status` is `succeeded`, then fetch `download_url` before `expires_at`."
)


class MeExportView(APIView):
    """Your data export: the latest one, or a new one."""

    @extend_schema(summary="Your latest data export", description=EXPORT_DESCRIPTION,
                   responses={200: DataExportSerializer, 404: OpenApiResponse(ERROR, description="You have not asked for one, or it expired and was deleted.")})
    def get(self, request: Request) -> Response:
        export = latest_export(request.user)
        if export is None:
            raise exceptions.NotFound("No export: POST here to prepare one.")
        return Response(DataExportSerializer(export, context={"request": request}).data)

    @extend_schema(summary="Prepare a data export of everything you own", description=EXPORT_DESCRIPTION + " One at a time: "
                   "while one is queued or running, POST answers 200 with that one instead of making another.", request=None,
                   responses={202: DataExportSerializer, 200: OpenApiResponse(DataExportSerializer, description="One is already being made: that one.")})
    def post(self, request: Request) -> Response:
        export, created = request_export(user=request.user)
        data = DataExportSerializer(export, context={"request": request}).data
        return Response(data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


class MeExportArchiveView(APIView):
    content_negotiation_class = FileNegotiation

    @extend_schema(
        summary="Download your data export (zip)",
        responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY),
                   404: OpenApiResponse(ERROR, description="No archive: none made yet, still being made, or deleted after it expired."),
                   410: OpenApiResponse(ERROR, description="The archive's link expired: POST /api/v1/me/export/ for a new one.")},
    )
    def get(self, request: Request):
        export = latest_export(request.user)
        if export is None or not export.file:
            raise exceptions.NotFound("No archive: POST /api/v1/me/export/ to prepare one, then wait for it to succeed.")
        if export.is_expired:
            raise ArchiveGone(f"This archive expired on {export.expires_at:%Y-%m-%d %H:%M} UTC: POST /api/v1/me/export/ for a new one.")
        return archive_response(export)


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
