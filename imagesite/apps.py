from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ImagesiteConfig(AppConfig):
    name = "imagesite"
    verbose_name = "imagesite"

    def ready(self) -> None:
        from .invite_admin import register as register_invite_admin
        from .jobs import ensure_reaper_schedule

        register_invite_admin()  # the admin's Invites (imagesite/invite_admin.py)

        # The reaper's django-q2 schedule is made (idempotently) after every migrate.
        post_migrate.connect(ensure_reaper_schedule, sender=self, dispatch_uid="imagesite-reaper-schedule")
