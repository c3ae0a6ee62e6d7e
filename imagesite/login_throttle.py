"""Login throttling with django-axes: the three places where our rules differ from axes' defaults.

Settings (imagesite/settings.py, "Login throttling") lock out an account and an address separately,
each after AXES_FAILURE_LIMIT failures, for AXES_COOLOFF_TIME.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: REMOTE_ADDR, or behind IMAGESITE_PROXY_COUNT reverse proxies that each
    append to X-Forwarded-For, the entry the outermost of them appended. Entries to its left come from
    the client and can be forged, so they are never used."""
    proxies = settings.IMAGESITE_PROXY_COUNT
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if proxies and len(forwarded) >= proxies:
        return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuses logins while locked out. Only a web request has a client to throttle: calls without
    one (the test client's login(), scripts) pass through to the next backend instead of raising."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class LoginThrottleHandler(AxesDatabaseHandler):
    """A successful login clears that account's failures only. Axes would also clear every failure
    from the same address, so anyone with an account of their own could reset the per-address lock
    between guesses at other people's passwords."""

    def reset_user_attempts(self, request: HttpRequest, credentials: dict | None = None) -> int:
        return forget_failures(get_client_username(request, credentials))


def forget_failures(username: str) -> int:
    """End the account's lock-out: its failed logins are forgotten (the address's are kept)."""
    deleted, _ = AccessAttempt.objects.filter(username=username).delete()
    return deleted
