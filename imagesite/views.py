from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET, require_http_methods

from .accounts import delete_account
from .forms import DeleteAccountForm, SignUpForm


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("generation-new")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("generation-new")
    return render(request, "registration/signup.html", {"form": form})


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers and tools ask for whatever the page's <link rel="icon"> says:
    the static SVG (not a permanent redirect: its hashed static name changes between releases)."""
    return redirect(static("favicon.svg"))


@login_required
@require_http_methods(["GET", "POST"])
def account_delete(request: HttpRequest) -> HttpResponse:
    """Delete the signed-in user's account, every row and file of theirs, after their password."""
    form = DeleteAccountForm(request.POST or None, request=request)
    if request.method == "POST" and form.is_valid():
        username = request.user.get_username()
        delete_account(user=request.user)
        logout(request)
        messages.info(request, f"Deleted the account {username} with all its images, subjects, photos and checkpoints.")
        return redirect("login")
    return render(request, "account/delete.html", {"form": form}, status=400 if form.errors else 200)
