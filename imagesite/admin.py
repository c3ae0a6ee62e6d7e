from django.contrib import admin
from django.http import HttpRequest

from .models import UserLimits


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    """Staff raise or lower a user's limits here; blank fields keep the site default."""

    list_display = ("user", "generations_per_hour", "uploads_per_hour", "trainings_per_day", "max_queued_jobs")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)


class JobAdmin(admin.ModelAdmin):
    """A job row (generation, training run) is what its owner asked for and what the worker did with
    it: staff read and delete it, never edit it (a changed status or prompt would lie about the job,
    and a row made here would be one no worker claims). State changes belong in admin actions that
    call the job's own methods."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> tuple[str, ...]:
        fields = [field.name for field in self.model._meta.concrete_fields if field.editable and not field.primary_key]
        return (*self.readonly_fields, *(name for name in fields if name not in self.readonly_fields))
