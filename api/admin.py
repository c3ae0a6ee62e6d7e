from django.contrib import admin

from .models import ApiToken, WebhookDelivery, WebhookSettings


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "hint", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "owner__username", "hint")
    readonly_fields = ("owner", "hint", "created_at", "last_used_at")
    exclude = ("key_hash",)

    def has_add_permission(self, request) -> bool:
        return False  # made by their owners on the account page, where the key is shown once


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("event", "owner", "url", "status", "attempts", "created_at", "delivered_at")
    list_filter = ("status", "event")
    search_fields = ("owner__username", "url")
    readonly_fields = ("owner", "event", "url", "payload", "attempts", "attempt_log", "next_attempt_at", "created_at", "delivered_at")


@admin.register(WebhookSettings)
class WebhookSettingsAdmin(admin.ModelAdmin):
    list_display = ("user", "default_url")
    search_fields = ("user__username",)
    exclude = ("secret",)
