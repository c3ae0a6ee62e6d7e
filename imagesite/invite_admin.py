"""The admin's Invites: staff make single-use sign-up links with an expiry and copy them from here.
Imported by imagesite/admin.py, which the admin's autodiscovery loads."""
from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from .invites import default_expiry, invite_url, signup_mode
from .models import Invite


def _link_field(request: HttpRequest):
    """A column/read-only field with the invite's full link in a box that selects itself on click."""

    def link(invite: Invite) -> str:
        if not invite.pk:
            return "Save to make the link."
        return format_html('<input type="text" readonly size="70" value="{}" onclick="this.select()" aria-label="Invite link">',
                           invite_url(invite, request))

    link.short_description = "Link to copy"
    return link


def state(invite: Invite) -> str:
    if invite.used_at:
        return f"used by {invite.used_by or 'a deleted user'} on {timezone.localtime(invite.used_at):%Y-%m-%d %H:%M}"
    if invite.expires_at <= timezone.now():
        return "expired"
    return "open"


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Add an invite (a note saying who it is for, an expiry), then copy its link to that person. It
    makes one account; used and expired ones stay listed for the record."""

    search_fields = ("note", "used_by__username")
    list_filter = ("created_at", "expires_at")
    date_hierarchy = "created_at"

    def get_list_display(self, request: HttpRequest):
        return ("note", _link_field(request), state, "expires_at", "created_by", "created_at")

    def get_fields(self, request: HttpRequest, obj=None):
        return ("note", "expires_at") if obj is None else ("note", "expires_at", _link_field(request), state, "created_by", "created_at", "used_by", "used_at")

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ()
        # A used invite is a record: nothing on it changes.
        editable = () if obj.used_at else ("note", "expires_at")
        fields = ("note", "expires_at", _link_field(request), state, "created_by", "created_at", "used_by", "used_at")
        return tuple(field for field in fields if field not in editable)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        return {**super().get_changeform_initial_data(request), "expires_at": default_expiry()}

    def save_model(self, request: HttpRequest, obj: Invite, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        if not change:
            note = "" if signup_mode() == "invite" else f" (IMAGESITE_SIGNUP is {signup_mode()!r}: invite links work only when it is 'invite')"
            self.message_user(request, format_html("Copy the invite link and send it: {}{}", invite_url(obj, request), note), messages.SUCCESS)
