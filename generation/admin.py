from django.contrib import admin

from .models import GeneratedImage, Generation


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    fields = ("index", "seed", "width", "height", "favourite", "created_at")
    readonly_fields = fields


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ("pk", "owner", "prompt", "status", "attempts", "created_at", "finished_at")
    list_filter = ("status", "scheduler")
    search_fields = ("prompt", "owner__username")
    readonly_fields = ("created_at", "started_at", "finished_at", "heartbeat_at")
    inlines = [GeneratedImageInline]
