from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Subjects and training"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (deletes files with their rows)
