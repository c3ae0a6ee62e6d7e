from __future__ import annotations

from django import forms

from .models import ApiToken, WebhookSettings
from .webhooks import check_webhook_url


class TokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name"]
        help_texts = {"name": "What the token is for, e.g. “batch script on my laptop”."}


class WebhookSettingsForm(forms.ModelForm):
    class Meta:
        model = WebhookSettings
        fields = ["default_url"]
        labels = {"default_url": "Default webhook URL"}
        help_texts = {"default_url": "Jobs that name no webhook_url report here when they end. Blank for none."}

    def clean_default_url(self) -> str:
        value = self.cleaned_data["default_url"]
        return check_webhook_url(value) if value else value
