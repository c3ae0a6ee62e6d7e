"""The shared API routes (the account, webhooks, schema, docs), mounted at /api/ by imagesite/urls.py
after each app's own routes, and last the JSON 404 for every other /api/ path."""
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from . import account_views

router = SimpleRouter()
router.register("webhook-deliveries", account_views.WebhookDeliveryViewSet, basename="api-webhook-delivery")

urlpatterns = [
    path("v1/me/", account_views.MeView.as_view(), name="api-me"),
    path("v1/me/webhook-secret/", account_views.WebhookSecretView.as_view(), name="api-webhook-secret"),
    path("v1/me/export/", account_views.MeExportView.as_view(), name="api-me-export"),
    path("v1/me/export/archive/", account_views.MeExportArchiveView.as_view(), name="api-me-export-archive"),
    path("v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("v1/", include(router.urls)),
    re_path(r"^", account_views.api_not_found),
]
