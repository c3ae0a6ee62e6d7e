"""Generation's API routes, mounted at /api/v1/ by imagesite/urls.py."""
from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, prompt_file_api

router = SimpleRouter()
router.register("generations", api.GenerationViewSet, basename="api-generation")
router.register("images", api.ImageViewSet, basename="api-image")
router.register("loras", prompt_file_api.LoraViewSet, basename="api-lora")
router.register("embeddings", prompt_file_api.EmbeddingViewSet, basename="api-embedding")

urlpatterns = [
    path("models/", api.ModelsView.as_view(), name="api-models"),
    path("png-info/", api.PngInfoView.as_view(), name="api-png-info"),
    *router.urls,
]
