from django import forms
from django.contrib.auth import authenticate
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User


class SignUpForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username",)


class DeleteAccountForm(forms.Form):
    """The signed-in user confirms with their password that their account and every file go. The
    password is checked through authenticate(), so wrong guesses count towards the login lock-out
    (django-axes) as they do on the login page: a stolen session cannot guess its way through."""

    password = forms.CharField(label="Your password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request
        self.user = request.user

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        found = authenticate(self.request, username=self.user.get_username(), password=password)
        if found is None or found.pk != self.user.pk:
            raise forms.ValidationError("That is not your password; nothing was deleted.", code="password_incorrect")
        return password
