from datetime import timedelta

from django.apps import AppConfig
from django.db.models.signals import post_migrate

PHOTO_REQUEUE = "training.tasks.requeue_stale_photos"


def ensure_photo_requeue_schedule(using: str = "default", **kwargs) -> None:
    """post_migrate receiver: requeue_stale_photos every minute."""
    from imagesite.jobs import ensure_every_minute

    ensure_every_minute(PHOTO_REQUEUE, "requeue stale photos", using)


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
        quotas.register("gpu_seconds_per_day", lambda user: TrainingRun.objects.for_user(user), window=timedelta(days=1))
        quotas.register("uploads_per_hour", lambda user: SubjectPhoto.objects.for_user(user), window=timedelta(hours=1))
        register_job_serializer(TrainingRun, TrainingRunSerializer)
        from imagesite.export import register_part

        from .export_parts import training_part

        register_part("training", training_part)  # subjects' photos and checkpoints in a data export
        post_migrate.connect(ensure_photo_requeue_schedule, sender=self, dispatch_uid="training-photo-requeue-schedule")
