"""The account page for the API: named tokens (the key shown once), the webhook secret and default
URL, and recent webhook deliveries."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from .forms import TokenForm, WebhookSettingsForm
from .models import ApiToken, WebhookDelivery, WebhookSettings


@login_required
@never_cache  # the response to a new token holds its key: no cache may keep it
@require_http_methods(["GET", "POST"])
def api_account(request: HttpRequest) -> HttpResponse:
    hooks = WebhookSettings.for_user(request.user)
    token_form, hooks_form = TokenForm(prefix="token"), WebhookSettingsForm(instance=hooks, prefix="hooks")
    new_key, status = None, 200
    if request.method == "POST" and "token-name" in request.POST:
        token_form = TokenForm(request.POST, prefix="token")
        if token_form.is_valid():
            _, new_key = ApiToken.create_for(request.user, token_form.cleaned_data["name"])
            # Shown in this response only, never redirected through the session: only its hash is stored.
            token_form, status = TokenForm(prefix="token"), 201
    elif request.method == "POST":
        hooks_form = WebhookSettingsForm(request.POST, instance=hooks, prefix="hooks")
        if hooks_form.is_valid():
            hooks_form.save()
            messages.info(request, "Saved the default webhook URL.")
            return redirect("api-account")
    return render(request, "api/account.html", {
        "new_key": new_key,
        "tokens": ApiToken.objects.for_user(request.user).active(),
        "token_form": token_form,
        "hooks": hooks,
        "hooks_form": hooks_form,
        "deliveries": WebhookDelivery.objects.for_user(request.user)[:20],
    }, status=status)


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
