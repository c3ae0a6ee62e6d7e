from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _export_files() -> list[str]:
    """Archives the export rows name, and the half-written archive of each export still at work."""
    from .models import DataExport
    from .orphans import stored_names

    names = list(stored_names(DataExport.objects.all(), "file"))
    active = DataExport.objects.active().order_by().values_list("pk", "owner_id")
    names += [DataExport(pk=pk, owner_id=owner_id).partial_name() for pk, owner_id in active]
    return names


class ImagesiteConfig(AppConfig):
    name = "imagesite"
    verbose_name = "imagesite"

    def ready(self) -> None:
        from . import orphans
        from .export import ensure_sweep_schedule
        from .jobs import ensure_reaper_schedule

        # The reaper's, the export sweep's and the orphan sweep's django-q2 schedules are made
        # (idempotently) after every migrate.
        post_migrate.connect(ensure_reaper_schedule, sender=self, dispatch_uid="imagesite-reaper-schedule")
        post_migrate.connect(ensure_sweep_schedule, sender=self, dispatch_uid="imagesite-export-sweep-schedule")
        post_migrate.connect(orphans.ensure_sweep_schedule, sender=self, dispatch_uid="imagesite-orphan-sweep-schedule")
        orphans.register("imagesite", roots=("exports",), files=_export_files)
