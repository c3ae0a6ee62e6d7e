from datetime import timedelta

from django.apps import AppConfig
from django.db.models.signals import post_migrate

PHOTO_REQUEUE = "training.tasks.requeue_stale_photos"


def ensure_photo_requeue_schedule(using: str = "default", **kwargs) -> None:
    """post_migrate receiver: requeue_stale_photos every minute."""
    from imagesite.jobs import ensure_every_minute

    ensure_every_minute(PHOTO_REQUEUE, "requeue stale photos", using)


def _referenced_files():
    """Each photo's raw upload (until processed), cleaned photo and crop."""
    from imagesite.orphans import stored_names

    from .models import SubjectPhoto

    return stored_names(SubjectPhoto.objects.all(), "upload", "image", "crop")


def _referenced_folders():
    """Folders whose whole tree a row keeps: each subject's class images, and each run's output folder
    while the run is queued or running or holds a checkpoint. A run that ended without one (failed,
    canceled) had its folder removed on the way out (tasks._discard_outputs), unless its worker was
    killed: then what it left there is swept."""
    from django.db.models import Q

    from imagesite.jobs import ACTIVE_STATUSES

    from .models import Subject, TrainingRun

    for pk, owner_id in Subject.objects.order_by().values_list("pk", "owner_id").iterator(chunk_size=5000):
        yield f"{Subject(pk=pk, owner_id=owner_id).files_prefix()}/class_images"
    kept = TrainingRun.objects.exclude(files_dir="").filter(Q(status__in=ACTIVE_STATUSES) | ~Q(checkpoint=""))
    yield from kept.order_by().values_list("files_dir", flat=True).iterator(chunk_size=5000)


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Subjects and training"

    def ready(self) -> None:
        from api.webhooks import register_job_serializer
        from imagesite import orphans, quotas

        from . import signals  # noqa: F401  (deletes files with their rows)
        from .models import SubjectPhoto, TrainingRun
        from .serializers import TrainingRunSerializer

        quotas.register("max_queued_jobs", lambda user: TrainingRun.objects.for_user(user).active())
        quotas.register("trainings_per_day", lambda user: TrainingRun.objects.for_user(user), window=timedelta(days=1))
        quotas.register("gpu_seconds_per_day", lambda user: TrainingRun.objects.for_user(user), window=timedelta(days=1))
        quotas.register("uploads_per_hour", lambda user: SubjectPhoto.objects.for_user(user), window=timedelta(hours=1))
        register_job_serializer(TrainingRun, TrainingRunSerializer)
        # Files a killed worker or request wrote but never committed a row for go after an hour.
        # The loop's atomic writes use dot names (a checkpoint's .staging-*/.old-* folders, a class
        # image's .<name>.<hex>.tmp): an old one in a kept folder was left by a killed worker.
        orphans.register("training", roots=("photos", "subjects"), files=_referenced_files, folders=_referenced_folders,
                         scratch=(".",))
        from imagesite.export import register_part

        from .export_parts import training_part

        register_part("training", training_part)  # subjects' photos and checkpoints in a data export
        post_migrate.connect(ensure_photo_requeue_schedule, sender=self, dispatch_uid="training-photo-requeue-schedule")
