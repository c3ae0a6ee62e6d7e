"""API tokens and webhook deliveries. (Per-user limits are imagesite.UserLimits: they bind pages too.)"""
from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "isk_"


def hash_token(key: str) -> str:
    # Tokens carry 256 random bits, so a fast unsalted hash is enough: nothing to brute-force, and
    # it allows an indexed lookup by hash.
    return hashlib.sha256(key.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def for_user(self, user) -> "ApiTokenQuerySet":
        return self.filter(owner=user)

    def active(self) -> "ApiTokenQuerySet":
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A named token a user created on the account page. Only its hash is stored: the key is shown
    once, when it is made."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(max_length=16, editable=False, help_text="The key's first characters, to tell tokens apart.")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def create_for(cls, owner, name: str) -> tuple["ApiToken", str]:
        """Make a token; returns the row and the plain key, which is not kept anywhere."""
        key = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(owner=owner, name=name, key_hash=hash_token(key), hint=key[:10])
        return token, key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class WebhookSettings(models.Model):
    """A user's signing secret and default webhook URL (used when a job names none)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_settings")
    secret = models.CharField(max_length=64)
    default_url = models.URLField(blank=True, max_length=500)

    class Meta:
        verbose_name = verbose_name_plural = "webhook settings"

    def __str__(self) -> str:
        return f"webhooks of {self.user}"

    @classmethod
    def for_user(cls, user) -> "WebhookSettings":
        found, _ = cls.objects.get_or_create(user=user, defaults={"secret": cls.new_secret()})
        return found

    @staticmethod
    def new_secret() -> str:
        return "whsec_" + secrets.token_hex(24)

    def rotate_secret(self) -> str:
        self.secret = self.new_secret()
        self.save(update_fields=["secret"])
        return self.secret


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDeliveryQuerySet(models.QuerySet):
    def for_user(self, user) -> "WebhookDeliveryQuerySet":
        return self.filter(owner=user)


class WebhookDelivery(models.Model):
    """One event to POST to one URL, with every attempt kept so the user can see what happened."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=50)
    url = models.URLField(max_length=500)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # [{"at": iso time, "status_code": int | null, "error": str, "duration_ms": int}]
    attempt_log = models.JSONField(default=list, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} → {self.url} ({self.status})"
