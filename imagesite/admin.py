from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest

from .accounts import delete_account
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


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(UserAdmin):
    """Django's user admin, whose delete (one user or the bulk action) goes through delete_account,
    as a user's own does: every row and file of theirs, running jobs stopped. Staff set a password
    here with the stock "change password" form."""

    def delete_model(self, request: HttpRequest, obj) -> None:
        delete_account(user=obj)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for user in queryset:
            delete_account(user=user)
