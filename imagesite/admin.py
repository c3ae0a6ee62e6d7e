from django.contrib import admin

from .models import UserLimits


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    """Staff raise or lower a user's limits here; blank fields keep the site default."""

    list_display = ("user", "generations_per_hour", "uploads_per_hour", "trainings_per_day", "max_queued_jobs")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
