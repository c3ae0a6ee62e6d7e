from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API, tokens and webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import webhooks  # noqa: F401  (listens to job_finished)
        from . import schema  # noqa: F401  (registers the token auth scheme with drf-spectacular)
