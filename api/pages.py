"""The account page for the API: named tokens (the key shown once, on the page the creating POST
redirects to, and in clear nowhere else), the webhook secret and default URL, and recent webhook deliveries."""
from __future__ import annotations

import secrets
from base64 import urlsafe_b64decode, urlsafe_b64encode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from imagesite import quotas

from .account_views import usage_for
from .forms import TokenForm, WebhookSettingsForm
from .models import ApiToken, WebhookDelivery, WebhookSettings, hash_token


# A new token's key travels from the POST to the page that shows it (post/redirect/get) split in two
# halves of a one-time pad, neither of which says anything about the key alone: the session keeps a
# random pad, and the browser a cookie with key XOR pad. So the key is in clear nowhere but on the page:
# not in the session table, not in the browser's cookie store (which may write even a session cookie to
# disk). The cookie is signed (its timestamp limits it to two minutes), HttpOnly, SameSite=Strict, sent
# only to this page, a browser-session cookie (no Max-Age), and deleted, with the pad, by that page.
# Only the key's hash is stored.
NEW_KEY_COOKIE = "imagesite_new_token"
NEW_KEY_PAD = "api.pages.new-token-pad"  # the session's half
NEW_KEY_MAX_AGE_S = 120
_NEW_KEY_SALT = "api.pages.new-token"


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


@login_required
@never_cache  # the page that shows a new token holds its key: no cache may keep it
@require_http_methods(["GET", "POST"])
def api_account(request: HttpRequest) -> HttpResponse:
    hooks = WebhookSettings.for_user(request.user)
    token_form, hooks_form = TokenForm(prefix="token"), WebhookSettingsForm(instance=hooks, prefix="hooks")
    if request.method == "POST" and "token-name" in request.POST:
        token_form = TokenForm(request.POST, prefix="token")
        if token_form.is_valid():
            token, key = ApiToken.create_for(request.user, token_form.cleaned_data["name"])
            pad = secrets.token_bytes(len(key.encode()))
            request.session[NEW_KEY_PAD] = urlsafe_b64encode(pad).decode()
            masked = urlsafe_b64encode(_xor(key.encode(), pad)).decode()
            response = redirect("api-account")  # post/redirect/get: a reload makes no second token
            response.set_signed_cookie(NEW_KEY_COOKIE, f"{token.pk}:{masked}", salt=_NEW_KEY_SALT,
                                       path=reverse("api-account"), secure=request.is_secure(), httponly=True, samesite="Strict")
            return response
    elif request.method == "POST":
        hooks_form = WebhookSettingsForm(request.POST, instance=hooks, prefix="hooks")
        if hooks_form.is_valid():
            hooks_form.save()
            messages.info(request, "Saved the default webhook URL.")
            return redirect("api-account")
    response = render(request, "api/account.html", {
        "new_key": _take_new_key(request) if request.method == "GET" else None,
        "tokens": ApiToken.objects.for_user(request.user).active(),
        "token_form": token_form,
        "hooks": hooks,
        "hooks_form": hooks_form,
        "deliveries": WebhookDelivery.objects.for_user(request.user)[:20],
        "usage": usage_for(request.user),
        "limits": quotas.limits_for(request.user),
    })
    if NEW_KEY_COOKIE in request.COOKIES:  # shown once: this view is its only one
        response.delete_cookie(NEW_KEY_COOKIE, path=reverse("api-account"), samesite="Strict")
    return response


def _take_new_key(request: HttpRequest) -> str | None:
    """The key the cookie and the session's pad make together, when the cookie is genuine and fresh
    and the key is an active token's of this user (a browser someone else logs into next shows them
    nothing). The pad is taken out of the session whatever the cookie says: the key shows once."""
    pad = request.session.pop(NEW_KEY_PAD, None)
    value = request.get_signed_cookie(NEW_KEY_COOKIE, default=None, salt=_NEW_KEY_SALT, max_age=NEW_KEY_MAX_AGE_S)
    pk, _, masked = (value or "").partition(":")
    if not (pad and pk.isdigit() and masked):
        return None
    try:
        key = _xor(urlsafe_b64decode(masked), urlsafe_b64decode(pad)).decode("ascii")
    except (ValueError, UnicodeDecodeError):  # not of one length, not base64: not this pad's half
        return None
    owned = ApiToken.objects.for_user(request.user).active().filter(pk=int(pk), key_hash=hash_token(key)).exists()
    return key if owned else None


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.for_user(request.user).active(), pk=pk)
    token.revoke()
    messages.info(request, f"Revoked “{token.name}”: it no longer works.")
    return redirect("api-account")


@login_required
@require_POST
def webhook_secret_rotate(request: HttpRequest) -> HttpResponse:
    WebhookSettings.for_user(request.user).rotate_secret()
    messages.info(request, "Made a new webhook secret; the old one no longer signs anything.")
    return redirect("api-account")
