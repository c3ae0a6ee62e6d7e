from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse

from imagesite.admin import JobAdmin

from . import catalog
from .models import BaseModel, Embedding, GeneratedImage, Generation, Lora, ModelOrigin


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    fields = ("index", "seed", "width", "height", "favourite", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # images come from a worker, with their files


@admin.register(Generation)
class GenerationAdmin(JobAdmin):
    list_display = ("pk", "owner", "prompt", "model_name", "status", "attempts", "created_at", "finished_at")
    list_filter = ("status", "scheduler", "base_model")
    search_fields = ("prompt", "owner__username")
    readonly_fields = ("created_at", "started_at", "finished_at", "heartbeat_at")
    inlines = [GeneratedImageInline]


class BaseModelForm(forms.ModelForm):
    """Staff list a checkpoint by its path (a diffusers folder, a .safetensors/.ckpt file or a hub
    id); the name, family and size are read from the files when left blank."""

    name = forms.CharField(required=False, max_length=200, help_text="Blank: the name the files give.")

    class Meta:
        model = BaseModel
        fields = ("name", "path", "enabled", "is_default")


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    form = BaseModelForm
    change_list_template = "generation/admin/basemodel_change_list.html"
    list_display = ("name", "family_label", "size", "defaults", "enabled", "is_default", "origin", "problem")
    list_filter = ("family", "enabled", "origin")
    search_fields = ("name", "path")
    readonly_fields = ("origin", "family", "family_label", "size", "defaults", "problem", "added_at", "scanned_at")

    @admin.display(description="size on disk", ordering="size_bytes")
    def size(self, obj: BaseModel) -> str:
        return filesizeformat(obj.size_bytes) if obj.size_bytes else "–"

    @admin.display(description="defaults")
    def defaults(self, obj: BaseModel) -> str:
        if obj.problem:
            return "–"
        d = obj.info().defaults()
        return f"{d['width']}×{d['height']}, {d['steps']} steps, CFG {d['guidance_scale']:g}, {d['scheduler']}"

    def get_readonly_fields(self, request, obj=None):
        # A scanned row's path is the scan's: change the folder or IMAGESITE_MODEL instead.
        return (*self.readonly_fields, "path") if obj is not None and obj.origin != ModelOrigin.ADMIN else self.readonly_fields

    def save_model(self, request, obj: BaseModel, form, change: bool) -> None:
        found = catalog.describe(obj.path)
        if not change:
            obj.origin = ModelOrigin.ADMIN
        taken = set(BaseModel.objects.exclude(pk=obj.pk).values_list("name", flat=True))
        obj.name = obj.name or catalog.unique_name(found.name, taken)
        obj.family, obj.family_label, obj.size_bytes, obj.problem = found.family, found.family_label, found.size_bytes, found.problem
        with transaction.atomic():
            if obj.is_default:  # one default: the new one replaces the old
                BaseModel.objects.exclude(pk=obj.pk).filter(is_default=True).update(is_default=False)
            super().save_model(request, obj, form, change)
        if obj.problem:
            messages.warning(request, f"{obj.name} is not offered: {obj.problem}")

    def get_urls(self):
        return [path("rescan/", self.admin_site.admin_view(self.rescan), name="generation_basemodel_rescan"), *super().get_urls()]

    def rescan(self, request: HttpRequest) -> HttpResponseRedirect:
        """Rescan the models folder and IMAGESITE_MODEL (POST from the list's button)."""
        if request.method == "POST" and self.has_change_permission(request):
            report = catalog.scan_models()
            messages.info(request, f"Scanned the models folder: {report}")
        return HttpResponseRedirect(reverse("admin:generation_basemodel_changelist"))


class PromptFileAdmin(admin.ModelAdmin):
    """Staff share a user's LoRA or embedding with everyone (`shared`); uploads come through the
    LoRAs page or the API, which check the file (generation.prompt_files)."""

    list_display = ("name", "owner", "family", "shared", "size", "uploaded_at")
    list_editable = ("shared",)
    list_filter = ("shared", "family")
    search_fields = ("name", "owner__username")
    readonly_fields = ("owner", "name", "file", "sha256", "size_bytes", "family", "uploaded_at")

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj) -> str:
        return filesizeformat(obj.size_bytes)


@admin.register(Lora)
class LoraAdmin(PromptFileAdmin):
    readonly_fields = (*PromptFileAdmin.readonly_fields, "layout")


@admin.register(Embedding)
class EmbeddingAdmin(PromptFileAdmin):
    readonly_fields = (*PromptFileAdmin.readonly_fields, "vectors")
