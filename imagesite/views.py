from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .accounts import delete_account
from .forms import AccountEmailForm, DeleteAccountForm, SignUpForm, ThrottledPasswordResetForm
from .invites import INVITE, SignUpRefused, check_signup, sign_up, signup_mode
from .login_throttle import forget_failures


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Sign-up as IMAGESITE_SIGNUP allows: open, by an invite link (`?invite=CODE`), or closed."""
    if request.user.is_authenticated:
        return redirect("generation-new")
    code = request.GET.get("invite", "").strip()
    try:
        check_signup(code)
    except SignUpRefused as refusal:
        return _signup_refused(request, refusal)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = sign_up(create_user=form.save, invite_code=code)
        except SignUpRefused as refusal:  # the invite went to a sign-up a moment earlier
            return _signup_refused(request, refusal)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("generation-new")
    return render(request, "registration/signup.html", {"form": form, "invite": code if signup_mode() == INVITE else ""})


def _signup_refused(request: HttpRequest, refusal: SignUpRefused) -> HttpResponse:
    return render(request, "registration/signup_refused.html", {"reason": str(refusal)}, status=403)


@login_required
@require_POST
def account_email(request: HttpRequest) -> HttpResponse:
    """Set the address password-reset mails go to (the account page's form), then back there."""
    form = AccountEmailForm(request.POST, request=request)
    if form.is_valid():
        form.save()
        messages.success(request, f"Password-reset mails now go to {form.cleaned_data['email']}." if form.cleaned_data["email"] else "No email address is kept now: staff can still set a new password for you.")
    else:
        messages.error(request, " ".join(error for errors in form.errors.values() for error in errors))
    return redirect("password_change")


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset view with the throttled form; a throttled request answers 429."""

    form_class = ThrottledPasswordResetForm

    def get_form_kwargs(self) -> dict:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_invalid(self, form) -> HttpResponse:
        response = super().form_invalid(form)
        if form.has_error("email", code="throttled"):
            response.status_code = 429
        return response


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


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's set-a-new-password view; the account's login lock-out (if wrong guesses locked it)
    ends with the reset: whoever holds the mailed link owns the account anyway."""

    def form_valid(self, form) -> HttpResponse:
        response = super().form_valid(form)
        forget_failures(form.user.get_username())
        return response

