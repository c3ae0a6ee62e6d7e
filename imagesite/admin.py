from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html

from . import invite_admin  # noqa: F401  (registers the admin's Invites)
from . import quotas
from .accounts import delete_account
from .export import archive_response, request_export
from .jobs import job_models
from .models import DataExport, QueueControl, UserLimits
from .queue import retry_job, wake_queued


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    """Staff raise or lower a user's limits here; blank fields keep the site default."""

    list_display = ("user", "generations_per_hour", "uploads_per_hour", "trainings_per_day", "max_queued_jobs", "priority")
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

    actions = ["cancel_jobs", "requeue_jobs", "retry_jobs"]

    @admin.action(description="Cancel (queued ones at once, running ones at their next step)", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset) -> None:
        done = sum(job.cancel() for job in queryset)
        self.message_user(request, f"Canceled {done} of {queryset.count()} job(s); the others had ended.", messages.INFO)

    @admin.action(description="Requeue running jobs (their worker stops; another takes them)", permissions=["change"])
    def requeue_jobs(self, request: HttpRequest, queryset) -> None:
        done = sum(job.requeue() for job in queryset)
        self.message_user(request, f"Requeued {done} running job(s) of {queryset.count()}.", messages.INFO)

    @admin.action(description="Retry failed or canceled jobs (afresh, past the owner's queue cap)", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset) -> None:
        done = 0
        for job in queryset:
            try:
                done += retry_job(job, check_quota=False)
            except ValidationError as exc:
                self.message_user(request, f"{job}: {' '.join(exc.messages)}", messages.WARNING)
        self.message_user(request, f"Queued {done} job(s) again of {queryset.count()}.", messages.INFO)


@admin.register(QueueControl)
class QueueControlAdmin(admin.ModelAdmin):
    """Pause and resume the job queue: while paused, workers take no new job and users see the reason."""

    list_display = ("__str__", "reason", "changed_at")
    fields = ("paused", "reason")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        QueueControl.current()  # one row, made on first visit
        return super().changelist_view(request, extra_context)

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not obj.paused:
            wake_queued(job_models())


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(UserAdmin):
    """Django's user admin, whose delete (one user or the bulk action) goes through delete_account,
    as a user's own does: every row and file of theirs, running jobs stopped. Staff set a password
    here with the stock "change password" form."""

    actions = ["export_data"]
    list_display = (*UserAdmin.list_display, "gpu_seconds_last_day", "active_jobs")

    @staticmethod
    def _usage(obj) -> dict[str, int]:
        # Both columns read one count of the row's user: the two limits they show, once per row.
        if not hasattr(obj, "_quota_usage"):
            obj._quota_usage = quotas.usage(obj, "gpu_seconds_per_day", "max_queued_jobs")
        return obj._quota_usage

    @admin.display(description="GPU-seconds, 24 h")
    def gpu_seconds_last_day(self, obj) -> int:
        return self._usage(obj)["gpu_seconds_per_day"]

    @admin.display(description="queued or running")
    def active_jobs(self, obj) -> int:
        return self._usage(obj)["max_queued_jobs"]

    def get_actions(self, request: HttpRequest) -> dict:
        """Django's bulk delete, named for what it does here (delete_queryset below); it keeps its
        confirmation page, which posts back to the action by its name."""
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            func, name, _ = actions["delete_selected"]
            actions[name] = (func, name, "Delete account and all files")
        return actions

    @admin.action(description="Export data (a zip of everything they own)", permissions=["change"])
    def export_data(self, request: HttpRequest, queryset) -> None:
        """Queue a data export per user (or keep the one being made); staff download it from Data exports."""
        for user in queryset:
            request_export(user=user)
        count = queryset.count()
        self.message_user(request, format_html(
            'Preparing {} export{}: the archive{} appear{} under <a href="{}">Data exports</a> when ready.',
            count, "s" if count != 1 else "", "s" if count != 1 else "", "" if count != 1 else "s",
            reverse("admin:imagesite_dataexport_changelist"),
        ), messages.INFO)

    def delete_model(self, request: HttpRequest, obj) -> None:
        delete_account(user=obj)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for user in queryset:
            delete_account(user=user)


@admin.register(DataExport)
class DataExportAdmin(JobAdmin):
    """Users' data exports: staff read them and download an archive while its link lasts (made from
    the user admin's "Export data" action, or by the user)."""

    list_display = ("owner", "status", "progress_percent", "created_at", "finished_at", "expires_at", "size_bytes", "archive")
    list_filter = ("status",)
    search_fields = ("owner__username",)
    readonly_fields = ("archive",)

    @admin.display(description="Archive")
    def archive(self, export: DataExport) -> str:
        if export.is_downloadable:
            return format_html('<a href="{}">{}</a>', reverse("admin:imagesite_dataexport_archive", args=[export.pk]), export.download_name())
        if export.status == "succeeded":
            return "expired"
        return "—"

    def get_urls(self):
        archive = path("<int:pk>/archive/", self.admin_site.admin_view(self.download_archive), name="imagesite_dataexport_archive")
        return [archive, *super().get_urls()]

    def download_archive(self, request: HttpRequest, pk: int) -> HttpResponse:
        export = get_object_or_404(DataExport, pk=pk)
        if not self.has_view_permission(request, export):
            raise PermissionDenied
        if not export.is_downloadable:
            self.message_user(request, "That archive expired or is not ready.", messages.WARNING)
            return redirect("admin:imagesite_dataexport_changelist")
        return archive_response(export)
