"""Serializers for generations, images and the model. Validation rules come from generation.rules,
shared with the forms (STYLE.md habit 4); quotas and defaults are generation.services'."""
from __future__ import annotations

from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from api.serializers import TEXT_SCHEMA, WEBHOOK_URL_SCHEMA, DescribedCharField, LinkField, ProgressSerializer, StrictSerializer, absolute
from api.job_fields import QueuePlaceField
from api.webhooks import check_webhook_url

from . import catalog, rules
from .models import MAX_SEED, SCHEDULER_CHOICES, GeneratedImage, Generation, HiresUpscaler, usable_subjects


class ImageSizeField(serializers.IntegerField):
    """Width or height in pixels; the schema states the model's limits (see api/schema.py)."""

    SIZE_MULTIPLE = 8



class ImageSizeFieldSchema(OpenApiSerializerFieldExtension):
    """Width and height limits are the loaded model's, read when the schema is made; the rule itself
    is generation.rules.validate_size."""

    target_class = "generation.serializers.ImageSizeField"

    def map_serializer_field(self, auto_schema, direction):
        low, high = catalog.size_limits()  # over every base model offered; each has its own (GET /models/)
        return {"type": "integer", "minimum": low, "maximum": high, "multipleOf": 8}


@extend_schema_field({
    "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1, "maxLength": 200}],
    "description": "A base model offered (GET /api/v1/models/), by id or name. Omitted: the subject's base, else the default.",
})
class BaseModelField(serializers.Field):
    """A base model picked by id or by name, among those offered."""

    default_error_messages = {"unknown": "No base model {value!r} is offered; see /api/v1/models/.", "invalid": "An id (number) or a name."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)) or data == "":
            self.fail("invalid")
        row = catalog.find_offered(data)
        if row is None:
            self.fail("unknown", value=data)
        return row

    def to_representation(self, value):
        return value.pk


# --- generations and images ----------------------------------------------------------------------
class ImageSummarySerializer(serializers.ModelSerializer):
    url = LinkField("api-image-detail")
    file_url = LinkField("api-image-download")
    thumbnail_url = LinkField("api-image-thumbnail")

    class Meta:
        model = GeneratedImage
        fields = ["id", "url", "index", "seed", "width", "height", "favourite", "file_url", "thumbnail_url"]
        read_only_fields = fields


class GenerationSerializer(serializers.ModelSerializer):
    """A generation as a job: status and progress, its settings and, when done, its images."""

    url = LinkField("api-generation-detail")
    cancel_url = LinkField("api-generation-cancel")
    page_url = LinkField("generation-detail")
    progress = ProgressSerializer(source="*", read_only=True)
    images = serializers.SerializerMethodField()
    preview_url = serializers.SerializerMethodField(help_text=(
        "While it runs: a small JPEG of the image so far (decoded cheaply from the latents, at the latents' size; "
        "several images side by side), replaced every half second or so; null before the first one and once it ends."))
    webhook_url = serializers.CharField(read_only=True, help_text="Blank when none was given.")
    init_image_url = serializers.SerializerMethodField()
    mask_url = serializers.SerializerMethodField()
    queue = QueuePlaceField()
    retry_url = LinkField("api-generation-retry")

    class Meta:
        model = Generation
        fields = [
            "id", "url", "cancel_url", "page_url", "status", "progress", "error", "attempts",
            "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler",
            "num_images", "model_name", "base_model", "phase", "subject", "subject_name", "webhook_url", "created_at", "started_at",
            "finished_at", "images", "preview_url",
            "source_image", "init_image_url", "strength", "mask_url", "mask_blur", "hires_scale", "hires_upscaler", "hires_strength", "hires_steps",
            "loras", "embeddings", "queue", "gpu_seconds", "retry_url",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "base_model": {"help_text": "The base model's id (GET /api/v1/models/); null once removed (model_name keeps its name)."},
            "phase": {"help_text": "While running: loading (the worker loads the base model) or rendering."},
            "source_image": {"help_text": "The image of yours the input was copied from; null for an upload, text-to-image, or once that image is deleted."},
            "strength": {"help_text": "img2img/inpainting denoising strength (0-1); unused without an input."},
            "mask_blur": {"help_text": "Inpainting mask edge blur in pixels."},
            "hires_scale": {"help_text": "Hires fix: 1 = off; the images are width×height times this (rounded to a multiple of 8)."},
            "hires_steps": {"help_text": "Steps of the hires pass; 0 = as many as steps."},
            "loras": {"help_text": "The prompt's <lora:name:weight> tags as resolved when the job was made (your LoRAs, shared ones, subjects)."},
            "embeddings": {"help_text": "Textual-inversion embeddings the prompts name, as resolved when the job was made."},
            "gpu_seconds": {"help_text": "GPU time the job used (its share when it ran in a batch with others)."},
        }

    @extend_schema_field(ImageSummarySerializer(many=True))
    def get_images(self, obj: Generation) -> list[dict]:
        images = sorted(obj.images.all(), key=lambda image: image.index)
        return ImageSummarySerializer(images, many=True, context=self.context).data

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True, "description": "The input image (img2img/inpainting), private to you; null without one."})
    def get_init_image_url(self, obj: Generation) -> str | None:
        return absolute(self.context, reverse("api-generation-input", args=[obj.pk])) if obj.init_image else None

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True, "description": "The inpainting mask (white = repainted), private to you; null without one."})
    def get_mask_url(self, obj: Generation) -> str | None:
        return absolute(self.context, reverse("api-generation-mask", args=[obj.pk])) if obj.mask else None

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_preview_url(self, obj: Generation) -> str | None:
        step = obj.preview_step  # a query only for running jobs
        if step is None:
            return None
        return absolute(self.context, f"{reverse('api-generation-preview', args=[obj.pk])}?step={step}")


class GenerationCreateSerializer(StrictSerializer):
    """What to render. Omitted settings take the loaded model's defaults (see /api/v1/models/); the
    service (generation.services.create_generation) applies them and every cross-field rule."""

    # rules.validate_prompt refuses a prompt that is only whitespace.
    prompt = DescribedCharField(schema=TEXT_SCHEMA, max_length=rules.MAX_PROMPT_CHARS, trim_whitespace=False)
    negative_prompt = serializers.CharField(max_length=rules.MAX_PROMPT_CHARS, required=False, allow_blank=True, default="")
    seed = serializers.IntegerField(min_value=0, max_value=MAX_SEED, required=False, allow_null=True, default=None, help_text="Omit or null for a random seed; the seed used is returned.")
    steps = serializers.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1], required=False)
    guidance_scale = serializers.FloatField(min_value=rules.GUIDANCE_RANGE[0], max_value=rules.GUIDANCE_RANGE[1], required=False)
    base_model = BaseModelField(required=False, allow_null=True, default=None)
    width = ImageSizeField(required=False, help_text="A multiple of 8 within the base model's limits.")
    height = ImageSizeField(required=False, help_text="A multiple of 8 within the base model's limits.")
    scheduler = serializers.ChoiceField(choices=SCHEDULER_CHOICES, required=False)
    num_images = serializers.IntegerField(min_value=rules.NUM_IMAGES_RANGE[0], max_value=rules.NUM_IMAGES_RANGE[1], required=False, default=1)
    webhook_url = DescribedCharField(schema=WEBHOOK_URL_SCHEMA, max_length=200, required=False, allow_blank=True, default="", help_text="POSTed a signed JSON payload when the job ends.")
    subject = serializers.PrimaryKeyRelatedField(
        queryset=GeneratedImage.objects.none(), required=False, allow_null=True, default=None,
        help_text="One of your trained subjects (its id); put its token in the prompt.",
    )

    # img2img, inpainting, hires fix: files by multipart; a gallery image by id in JSON or multipart
    init_image = serializers.FileField(required=False, allow_null=True, default=None, allow_empty_file=True,
                                       help_text="img2img/inpainting input: a PNG, JPEG or WebP (multipart). Width and height, when omitted, follow it.")
    source_image = serializers.PrimaryKeyRelatedField(
        queryset=GeneratedImage.objects.none(), required=False, allow_null=True, default=None,
        help_text="Instead of init_image: one of your images (its id) as the input; its file is copied.")
    strength = serializers.FloatField(min_value=rules.STRENGTH_RANGE[0], max_value=rules.STRENGTH_RANGE[1], required=False,
                                      help_text="Denoising strength with an input: 0 keeps it, 1 redraws it (default 0.75).")
    mask = serializers.FileField(required=False, allow_null=True, default=None, allow_empty_file=True,
                                 help_text="Inpainting mask of the input's size (multipart): white, or opaque in a transparent PNG, is repainted.")
    mask_blur = serializers.IntegerField(min_value=rules.MASK_BLUR_RANGE[0], max_value=rules.MASK_BLUR_RANGE[1], required=False,
                                         help_text="Mask edge blur in pixels (default 4).")
    hires_scale = serializers.FloatField(min_value=rules.HIRES_SCALE_RANGE[0], max_value=rules.HIRES_SCALE_RANGE[1], required=False,
                                         help_text="Hires fix (text-to-image): 1 = off (default); the result is width×height times this, within the model's limits.")
    hires_upscaler = serializers.ChoiceField(choices=HiresUpscaler.choices, required=False, help_text="latent (default) or lanczos.")
    hires_strength = serializers.FloatField(min_value=rules.STRENGTH_RANGE[0], max_value=rules.STRENGTH_RANGE[1], required=False,
                                            help_text="Denoising strength of the hires pass (default 0.7).")
    hires_steps = serializers.IntegerField(min_value=rules.HIRES_STEPS_RANGE[0], max_value=rules.HIRES_STEPS_RANGE[1], required=False,
                                           help_text="Steps of the hires pass; 0 (default) = as many as steps.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            # Only the user's own trained subjects and images: another user's id reads as "does not exist".
            self.fields["subject"].queryset = usable_subjects(request.user)
            self.fields["source_image"].queryset = GeneratedImage.objects.for_user(request.user)

    def validate_prompt(self, value: str) -> str:
        return rules.validate_prompt(value)

    def validate_webhook_url(self, value: str) -> str:
        return check_webhook_url(value) if value else value

class GenerationJsonSerializer(GenerationCreateSerializer):
    """The JSON body's fields, as documented: files (init_image, mask) come only in multipart bodies."""

    init_image = None
    mask = None


class ImageSerializer(serializers.ModelSerializer):
    """An image with everything needed to make it again."""

    url = LinkField("api-image-detail")
    file_url = LinkField("api-image-download")
    thumbnail_url = LinkField("api-image-thumbnail")
    favourite_url = LinkField("api-image-favourite")
    generation_url = serializers.SerializerMethodField()
    prompt = serializers.CharField(source="generation.prompt", read_only=True)
    negative_prompt = serializers.CharField(source="generation.negative_prompt", read_only=True)
    steps = serializers.IntegerField(source="generation.steps", read_only=True)
    guidance_scale = serializers.FloatField(source="generation.guidance_scale", read_only=True)
    scheduler = serializers.CharField(source="generation.scheduler", read_only=True)
    model_name = serializers.CharField(source="generation.model_name", read_only=True)
    subject = serializers.IntegerField(source="generation.subject_id", read_only=True, allow_null=True, help_text="The subject's id; null when none or deleted.")
    subject_name = serializers.CharField(source="generation.subject_name", read_only=True, help_text="Kept when the subject is deleted.")
    base_model = serializers.IntegerField(source="generation.base_model_id", read_only=True, allow_null=True, help_text="The base model's id; null when removed.")
    training_run = serializers.IntegerField(source="generation.training_run_id", read_only=True, allow_null=True,
                                            help_text="The training run that drew it as a validation sample; null for your own generations.")

    class Meta:
        model = GeneratedImage
        fields = [
            "id", "url", "generation", "generation_url", "index", "seed", "width", "height", "favourite",
            "prompt", "negative_prompt", "steps", "guidance_scale", "scheduler", "model_name", "base_model", "subject", "subject_name",
            "training_run", "created_at", "file_url", "thumbnail_url", "favourite_url",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_generation_url(self, obj: GeneratedImage) -> str:
        return absolute(self.context, reverse("api-generation-detail", args=[obj.generation_id]))


class SchedulerSerializer(serializers.Serializer):
    id = serializers.CharField()
    label = serializers.CharField()


class ModelLimitsSerializer(serializers.Serializer):
    min_size = serializers.IntegerField()
    max_size = serializers.IntegerField()
    size_multiple_of = serializers.IntegerField()
    steps = serializers.ListField(child=serializers.IntegerField(), help_text="[min, max]")
    guidance_scale = serializers.ListField(child=serializers.FloatField(), help_text="[min, max]")
    num_images = serializers.ListField(child=serializers.IntegerField(), help_text="[min, max]")
    max_prompt_chars = serializers.IntegerField()


class ModelDefaultsSerializer(serializers.Serializer):
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    steps = serializers.IntegerField()
    guidance_scale = serializers.FloatField()
    scheduler = serializers.CharField()
    num_images = serializers.IntegerField()


class ModelInfoSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="What generations and training runs take as base_model (or the name).")
    name = serializers.CharField()
    family = serializers.CharField(help_text="e.g. sd1, sd2, sdxl: a subject trained on one family works only with bases of that family.")
    family_label = serializers.CharField()
    size_bytes = serializers.IntegerField(help_text="Size on disk.")
    is_default = serializers.BooleanField(help_text="Used when a job names no base model.")
    kind = serializers.CharField(help_text="folder, single_file or hub")
    native_size = serializers.IntegerField()
    defaults = ModelDefaultsSerializer()
    limits = ModelLimitsSerializer()
    schedulers = SchedulerSerializer(many=True)
    example_prompts = serializers.ListField(child=serializers.CharField())
