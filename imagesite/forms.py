from django import forms
from django.contrib.auth import authenticate
from django.contrib.auth.forms import PasswordResetForm, UserCreationForm
from django.contrib.auth.models import User

from .password_reset import ResetThrottled, count_reset_request


class SignUpForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional: only for resetting a forgotten password.")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class _PasswordConfirmedForm(forms.Form):
    """A change the signed-in user confirms with their password. It is checked through authenticate(),
    so wrong guesses count towards the login lock-out (django-axes) as they do on the login page: a
    stolen session cannot guess its way through."""

    wrong_password = "That is not your password."

    password = forms.CharField(label="Your password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request
        self.user = request.user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        found = authenticate(self.request, username=self.user.get_username(), password=password)
        if found is None or found.pk != self.user.pk:
            raise forms.ValidationError(self.wrong_password, code="password_incorrect")
        return password


class AccountEmailForm(_PasswordConfirmedForm):
    """The address password-reset mails go to; changed only with the current password (else a stolen
    session could point resets at its own inbox and take the account)."""

    wrong_password = "That is not your password; the address was not changed."

    email = forms.EmailField(required=False, label="Email for password resets")
    field_order = ["email", "password"]

    def save(self) -> None:
        self.user.email = self.cleaned_data["email"]
        self.user.save(update_fields=["email"])


class ThrottledPasswordResetForm(PasswordResetForm):
    """Django's reset form, counting each request per email address and per client address before a
    mail goes out (imagesite.password_reset): the form cannot flood anyone's inbox. The answer is the
    same whether or not an account has that address."""

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_email(self) -> str:
        email = self.cleaned_data["email"]
        try:
            count_reset_request(self.request, email)
        except ResetThrottled as refusal:
            raise forms.ValidationError(str(refusal), code="throttled") from None
        return email


class DeleteAccountForm(_PasswordConfirmedForm):
    """The signed-in user confirms with their password that their account and every file go."""

    wrong_password = "That is not your password; nothing was deleted."
