from datetime import timedelta

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Subjects and training"

    def ready(self) -> None:
        from api.webhooks import register_job_serializer
        from imagesite import quotas

        from . import signals  # noqa: F401  (deletes files with their rows)
        from .models import SubjectPhoto, TrainingRun
        from .serializers import TrainingRunSerializer

        quotas.register("max_queued_jobs", lambda user: TrainingRun.objects.for_user(user).active())
        quotas.register("trainings_per_day", lambda user: TrainingRun.objects.for_user(user), window=timedelta(days=1))
        quotas.register("uploads_per_hour", lambda user: SubjectPhoto.objects.for_user(user), window=timedelta(hours=1))
        register_job_serializer(TrainingRun, TrainingRunSerializer)
