"""The bottom layer's models: per-user limits (every app's services admit work against them), a user's
data exports (imagesite.export) and sign-up invites."""
from __future__ import annotations

import re
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models.signals import post_delete
from django.utils import timezone

from .jobs import Job, JobStatus


class UserLimits(models.Model):
    """Per-user overrides of the site's limits, set by staff in the admin. Blank = the site default
    (settings.IMAGESITE_API_LIMITS). Bind pages and API alike (imagesite.quotas)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_limits")
    generations_per_hour = models.PositiveIntegerField(null=True, blank=True)
    uploads_per_hour = models.PositiveIntegerField(null=True, blank=True, help_text="Photos uploaded per hour.")
    trainings_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_queued_jobs = models.PositiveIntegerField(null=True, blank=True, help_text="Queued or running jobs at once.")
    gpu_seconds_per_day = models.PositiveIntegerField(null=True, blank=True, help_text="GPU time a day (0: no cap).")
    priority = models.SmallIntegerField(default=0, help_text="Queue priority: higher goes first; users of equal priority take turns.")

    class Meta:
        # Moved here from the api app; the table keeps its name (no data migration).
        db_table = "api_userlimits"
        verbose_name = "user limits"
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"limits for {self.user}"


def _export_path(instance: "DataExport", filename: str) -> str:
    return f"exports/{instance.owner_id}/{uuid.uuid4().hex}.zip"


class DataExport(Job):
    """One archive of everything a user owns, made in the background; its link expires."""

    task_path = "imagesite.export.run_export"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="data_exports")
    file = models.FileField(upload_to=_export_path, max_length=255, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="The archive is deleted after this.")

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"export {self.pk} of {self.owner} ({self.status})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_downloadable(self) -> bool:
        return self.status == JobStatus.SUCCEEDED and bool(self.file) and not self.is_expired

    def download_name(self) -> str:
        """The archive's file name on the user's disk: whose, and when it was made."""
        made = self.finished_at or self.created_at
        who = re.sub(r"[^A-Za-z0-9._-]+", "-", self.owner.get_username()).strip("-.") or "user"  # an ASCII header value
        return f"imagesite-{who}-{made:%Y%m%d-%H%M}.zip"

    def partial_name(self) -> str:
        """Storage name the worker writes the archive under until it is complete (then renamed):
        one per export, so a retry overwrites what a killed worker left."""
        return f"exports/{self.owner_id}/export-{self.pk}.zip.part"


def _delete_export_files(sender, instance: DataExport, **kwargs) -> None:
    """An export's archive, and any half-written one, go with its row (account deletion included)."""
    from django.core.files.storage import default_storage
    from django.db import transaction

    from .files import delete_file_on_commit

    delete_file_on_commit(instance.file)
    partial = instance.partial_name()
    transaction.on_commit(lambda: default_storage.delete(partial))


post_delete.connect(_delete_export_files, sender=DataExport, dispatch_uid="imagesite-delete-export-files")


def new_invite_code() -> str:
    return secrets.token_urlsafe(24)


class Invite(models.Model):
    """A single-use sign-up link made by staff (IMAGESITE_SIGNUP=invite)."""

    code = models.CharField(max_length=64, unique=True, default=new_invite_code, editable=False)
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for (shown to staff only).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.note or f"invite {self.code[:6]}…"


class QueueControl(models.Model):
    """The operator's switch for the job queue (one row, made on first use): while paused, workers
    claim nothing and queued jobs wait; running jobs finish (imagesite.queue)."""

    paused = models.BooleanField(default=False)
    reason = models.CharField(max_length=200, blank=True, help_text="Shown to users while the queue is paused.")
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "queue"

    def __str__(self) -> str:
        return "paused" if self.paused else "running"

    @classmethod
    def current(cls) -> "QueueControl":
        return cls.objects.get_or_create(pk=1)[0]
