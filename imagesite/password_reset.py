"""Password-reset requests, throttled like logins: per email address and per client address.

Each request counts, whether or not an account has that address (so the refusal tells nothing about
accounts), in Django's cache for an hour from the first request of the window: at most
IMAGESITE_PASSWORD_RESET_PER_HOUR mails to one address, and from one client address a few times as
many (one person may try several addresses they might have used). The client address is the login
throttle's (imagesite.login_throttle.client_ip: REMOTE_ADDR, or the proxy's entry).
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from .login_throttle import client_ip

WINDOW_S = 3600
ADDRESS_FACTOR = 3  # a client address may ask for this many times the per-email limit


class ResetThrottled(Exception):
    """Too many reset requests for this email or from this address in the last hour."""


def _count(key: str) -> int:
    cache.add(key, 0, WINDOW_S)  # starts the window; a no-op while one is open
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, WINDOW_S)
        return 1


def count_reset_request(request: HttpRequest | None, email: str) -> None:
    """Count one reset request; raise ResetThrottled when either limit is passed."""
    limit = settings.IMAGESITE_PASSWORD_RESET_PER_HOUR
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # no addresses in the cache
    by_email = _count(f"password-reset:email:{digest}")
    address = client_ip(request) if request is not None else None
    by_address = _count(f"password-reset:ip:{address}") if address else 0
    if by_email > limit or by_address > limit * ADDRESS_FACTOR:
        raise ResetThrottled("Too many password-reset requests: try again in an hour, or ask the site's staff to set a new password.")
