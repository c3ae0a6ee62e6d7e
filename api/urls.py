from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from . import account_views, training_views, views

router = SimpleRouter()
router.register("generations", views.GenerationViewSet, basename="api-generation")
router.register("images", views.ImageViewSet, basename="api-image")
router.register("subjects", training_views.SubjectViewSet, basename="api-subject")
router.register("training-runs", training_views.TrainingRunViewSet, basename="api-training-run")
router.register("webhook-deliveries", account_views.WebhookDeliveryViewSet, basename="api-webhook-delivery")

# Mounted at /api/ by imagesite/urls.py.
urlpatterns = [
    path("v1/models/", account_views.ModelsView.as_view(), name="api-models"),
    path("v1/me/", account_views.MeView.as_view(), name="api-me"),
    path("v1/me/webhook-secret/", account_views.WebhookSecretView.as_view(), name="api-webhook-secret"),
    path("v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
urlpatterns += [path("v1/", include(router.urls))]
urlpatterns += [re_path(r"^", account_views.api_not_found)]
