from django.urls import path

from . import pages

# Mounted at /accounts/api/ by imagesite/urls.py.
urlpatterns = [
    path("", pages.api_account, name="api-account"),
    path("tokens/<int:pk>/revoke/", pages.token_revoke, name="api-token-revoke"),
    path("webhook-secret/rotate/", pages.webhook_secret_rotate, name="api-webhook-secret-rotate"),
]
