"""Per-user limits: the one model the bottom layer owns (every app's services admit work against it)."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class UserLimits(models.Model):
    """Per-user overrides of the site's limits, set by staff in the admin. Blank = the site default
    (settings.IMAGESITE_API_LIMITS). Bind pages and API alike (imagesite.quotas)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_limits")
    generations_per_hour = models.PositiveIntegerField(null=True, blank=True)
    uploads_per_hour = models.PositiveIntegerField(null=True, blank=True, help_text="Photos uploaded per hour.")
    trainings_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_queued_jobs = models.PositiveIntegerField(null=True, blank=True, help_text="Queued or running jobs at once.")

    class Meta:
        # Moved here from the api app; the table keeps its name (no data migration).
        db_table = "api_userlimits"
        verbose_name = "user limits"
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"limits for {self.user}"
