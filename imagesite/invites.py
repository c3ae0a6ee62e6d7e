"""Who may sign up (IMAGESITE_SIGNUP: open | invite | closed) and single-use invite links.

The sign-up page and any other way in call `sign_up()`, which creates the user and, by invitation,
takes the invite in the same transaction with one conditional UPDATE: of two sign-ups racing for one
invite exactly one gets it (SQLite serialises the writers; PostgreSQL re-checks the row after the
first commits), and the other's new user is rolled back.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

OPEN, INVITE, CLOSED = "open", "invite", "closed"
MODES = (OPEN, INVITE, CLOSED)
INVITE_DAYS = 7  # a new invite link's lifetime unless staff set another


class SignUpRefused(Exception):
    """Sign-up is not possible: closed, or an invite that is missing, unknown, used or expired. The
    message is for the person at the sign-up page."""


def signup_mode() -> str:
    mode = settings.IMAGESITE_SIGNUP
    if mode not in MODES:
        raise ImproperlyConfigured(f"IMAGESITE_SIGNUP={mode!r}: use open, invite or closed.")
    return mode


def signup_contact() -> str:
    return settings.IMAGESITE_SIGNUP_CONTACT or "the site's staff"


def signup_context(request: HttpRequest) -> dict[str, str]:
    """Template context processor: the login page and the header say who may sign up."""
    return {"signup_mode": signup_mode(), "signup_contact": signup_contact()}


def default_expiry():
    return timezone.now() + timedelta(days=INVITE_DAYS)


def invite_url(invite, request: HttpRequest | None = None) -> str:
    """The link to hand out: absolute when a request says the site's address, else a path."""
    path = f"{reverse('signup')}?invite={invite.code}"
    return request.build_absolute_uri(path) if request is not None else path


def make_invite(*, created_by=None, note: str = "", days: int = INVITE_DAYS):
    from .models import Invite

    return Invite.objects.create(created_by=created_by, note=note, expires_at=timezone.now() + timedelta(days=days))


def check_invite(code: str | None):
    """The usable invite for `code`, or SignUpRefused saying why not (for showing the page; sign_up()
    checks again in its transaction)."""
    from .models import Invite

    if not code:
        raise SignUpRefused(f"Sign-up is by invitation: ask {signup_contact()} for an invite link.")
    invite = Invite.objects.filter(code=code).first()
    if invite is None:
        raise SignUpRefused(f"This invite link is not valid (check that it was copied whole), or ask {signup_contact()} for a new one.")
    if invite.used_at is not None:
        raise SignUpRefused(f"This invite link has already been used. Ask {signup_contact()} for a new one.")
    if invite.expires_at <= timezone.now():
        when = timezone.localtime(invite.expires_at).strftime("%Y-%m-%d %H:%M %Z")
        raise SignUpRefused(f"This invite link expired on {when}. Ask {signup_contact()} for a new one.")
    return invite


def check_signup(invite_code: str | None) -> None:
    """SignUpRefused unless the mode lets someone with `invite_code` sign up now (the page asks before
    showing its form; sign_up() asks again)."""
    if signup_mode() == CLOSED:
        raise SignUpRefused("This site does not take sign-ups: its staff create accounts.")
    if signup_mode() == INVITE:
        check_invite(invite_code)


def sign_up(*, create_user, invite_code: str | None = None):
    """Create an account with `create_user()` (e.g. a valid sign-up form's save) if the mode allows:
    open always, invite with a usable invite (taken here, in the user's transaction), closed never."""
    from .models import Invite

    check_signup(invite_code)  # a clear message for the common cases, before any write
    if signup_mode() == OPEN:
        return create_user()
    try:
        with transaction.atomic():
            user = create_user()
            now = timezone.now()
            taken = Invite.objects.filter(code=invite_code, used_at__isnull=True, expires_at__gt=now).update(used_at=now, used_by=user)
            if taken != 1:
                raise _LostRace  # rolls the new user back
    except _LostRace:
        check_invite(invite_code)  # says why: used by the other sign-up, or expired this instant
        raise SignUpRefused(f"This invite link has already been used. Ask {signup_contact()} for a new one.") from None
    return user


class _LostRace(Exception):
    pass
