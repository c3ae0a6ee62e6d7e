from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ImagesiteConfig(AppConfig):
    name = "imagesite"
    verbose_name = "imagesite"

    def ready(self) -> None:
        from .export import ensure_sweep_schedule
        from .jobs import ensure_reaper_schedule

        # The reaper's and the export sweep's django-q2 schedules are made (idempotently) after every migrate.
        post_migrate.connect(ensure_reaper_schedule, sender=self, dispatch_uid="imagesite-reaper-schedule")
        post_migrate.connect(ensure_sweep_schedule, sender=self, dispatch_uid="imagesite-export-sweep-schedule")
