from django.contrib import admin

from imagesite.admin import JobAdmin

from .models import Subject, SubjectPhoto, TrainingRun


class SubjectPhotoInline(admin.TabularInline):
    model = SubjectPhoto
    extra = 0
    fields = ("original_name", "caption", "face_found", "width", "height", "created_at")
    readonly_fields = ("original_name", "face_found", "width", "height", "created_at")

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # a photo comes through the upload checks and a worker, never as a bare row


@admin.register(Subject)
class SubjectAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "token", "class_noun", "created_at")
    search_fields = ("name", "token", "owner__username")
    inlines = [SubjectPhotoInline]


@admin.register(TrainingRun)
class TrainingRunAdmin(JobAdmin):
    list_display = ("pk", "subject", "method", "status", "progress_step", "progress_total", "attempts", "created_at")
    list_filter = ("status", "method")
    readonly_fields = ("created_at", "started_at", "finished_at", "heartbeat_at", "checkpoint", "checkpoint_size", "files_dir")
