"""Training's API routes, mounted at /api/v1/ by imagesite/urls.py."""
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("subjects", api.SubjectViewSet, basename="api-subject")
router.register("training-runs", api.TrainingRunViewSet, basename="api-training-run")

urlpatterns = router.urls
