from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ImagesiteConfig(AppConfig):
    name = "imagesite"
    verbose_name = "imagesite"

    def ready(self) -> None:
        from .jobs import ensure_reaper_schedule

        # The reaper's django-q2 schedule is made (idempotently) after every migrate.
        post_migrate.connect(ensure_reaper_schedule, sender=self, dispatch_uid="imagesite-reaper-schedule")
