"""Serializers. Validation rules come from generation/rules.py (and training's), shared with the
forms (STYLE.md habit 4); nothing here re-implements them."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation import rules
from generation.models import MAX_SEED, SCHEDULER_CHOICES, GeneratedImage, Generation
from training.models import Subject

from . import webhooks
from .models import WebhookDelivery


def absolute(context: dict, path: str) -> str:
    """An absolute URL when serving a request; the path alone elsewhere (webhook payloads)."""
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


@extend_schema_field(OpenApiTypes.URI)
class LinkField(serializers.Field):
    """Read-only URL of a named route taking the object's pk."""

    def __init__(self, route: str, **kwargs):
        self.route = route
        kwargs.update(read_only=True, source="*")
        super().__init__(**kwargs)

    def to_representation(self, obj) -> str:
        return absolute(self.context, reverse(self.route, args=[obj.pk]))


class ImageSizeField(serializers.IntegerField):
    """Width or height in pixels; the schema states the model's limits (see api/schema.py)."""

    SIZE_MULTIPLE = 8


class ProgressSerializer(serializers.Serializer):
    step = serializers.IntegerField(source="progress_step")
    total = serializers.IntegerField(source="progress_total")
    percent = serializers.IntegerField(source="progress_percent")
    eta_seconds = serializers.FloatField(allow_null=True)


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
    webhook_url = serializers.CharField(read_only=True, help_text="Blank when none was given.")

    class Meta:
        model = Generation
        fields = [
            "id", "url", "cancel_url", "page_url", "status", "progress", "error", "attempts",
            "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler",
            "num_images", "model_name", "subject", "subject_name", "webhook_url", "created_at", "started_at", "finished_at", "images",
        ]
        read_only_fields = fields

    @extend_schema_field(ImageSummarySerializer(many=True))
    def get_images(self, obj: Generation) -> list[dict]:
        images = sorted(obj.images.all(), key=lambda image: image.index)
        return ImageSummarySerializer(images, many=True, context=self.context).data


class GenerationCreateSerializer(serializers.Serializer):
    """What to render. Omitted settings take the loaded model's defaults (see /api/v1/models/)."""

    prompt = serializers.CharField(max_length=rules.MAX_PROMPT_CHARS, trim_whitespace=False)
    negative_prompt = serializers.CharField(max_length=rules.MAX_PROMPT_CHARS, required=False, allow_blank=True, default="")
    seed = serializers.IntegerField(min_value=0, max_value=MAX_SEED, required=False, allow_null=True, default=None, help_text="Omit or null for a random seed; the seed used is returned.")
    steps = serializers.IntegerField(min_value=rules.STEPS_RANGE[0], max_value=rules.STEPS_RANGE[1], required=False)
    guidance_scale = serializers.FloatField(min_value=rules.GUIDANCE_RANGE[0], max_value=rules.GUIDANCE_RANGE[1], required=False)
    width = ImageSizeField(required=False, help_text="A multiple of 8 within the model's limits.")
    height = ImageSizeField(required=False, help_text="A multiple of 8 within the model's limits.")
    scheduler = serializers.ChoiceField(choices=SCHEDULER_CHOICES, required=False)
    num_images = serializers.IntegerField(min_value=rules.NUM_IMAGES_RANGE[0], max_value=rules.NUM_IMAGES_RANGE[1], required=False, default=1)
    webhook_url = serializers.CharField(max_length=200, required=False, allow_blank=True, default="", help_text="POSTed a signed JSON payload when the job ends.")
    subject = serializers.PrimaryKeyRelatedField(
        queryset=Subject.objects.none(), required=False, allow_null=True, default=None,
        help_text="One of your trained subjects (its id); put its token in the prompt.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            # Only the user's own trained subjects: another user's id reads as "does not exist".
            self.fields["subject"].queryset = Subject.objects.for_user(request.user).ready()

    def validate_prompt(self, value: str) -> str:
        return rules.validate_prompt(value)

    def validate_width(self, value: int) -> int:
        return rules.validate_size(value)

    def validate_height(self, value: int) -> int:
        return rules.validate_size(value)

    def validate_webhook_url(self, value: str) -> str:
        return webhooks.check_webhook_url(value) if value else value

    def validate(self, attrs: dict) -> dict:
        info = rules.current_model()
        for name in ("steps", "guidance_scale", "width", "height", "scheduler"):
            attrs.setdefault(name, getattr(info, name))
        if attrs.get("subject"):
            try:
                rules.validate_subject_in_prompt(attrs["prompt"], attrs["subject"].token)
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"prompt": exc.messages})
        return attrs


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

    class Meta:
        model = GeneratedImage
        fields = [
            "id", "url", "generation", "generation_url", "index", "seed", "width", "height", "favourite",
            "prompt", "negative_prompt", "steps", "guidance_scale", "scheduler", "model_name", "subject", "subject_name", "created_at",
            "file_url", "thumbnail_url", "favourite_url",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_generation_url(self, obj: GeneratedImage) -> str:
        return absolute(self.context, reverse("api-generation-detail", args=[obj.generation_id]))


# --- models, me, webhooks ------------------------------------------------------------------------
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
    name = serializers.CharField()
    kind = serializers.CharField(help_text="folder, single_file or hub")
    native_size = serializers.IntegerField()
    defaults = ModelDefaultsSerializer()
    limits = ModelLimitsSerializer()
    schedulers = SchedulerSerializer(many=True)
    example_prompts = serializers.ListField(child=serializers.CharField())


class LimitsSerializer(serializers.Serializer):
    generations_per_hour = serializers.IntegerField()
    uploads_per_hour = serializers.IntegerField()
    trainings_per_day = serializers.IntegerField()
    max_queued_jobs = serializers.IntegerField()


class UsageSerializer(serializers.Serializer):
    active_jobs = serializers.IntegerField(help_text="Queued or running generations and training runs.")
    generations_last_hour = serializers.IntegerField()
    photos_uploaded_last_hour = serializers.IntegerField()
    trainings_last_day = serializers.IntegerField()
    generations_total = serializers.IntegerField()
    images_total = serializers.IntegerField()
    subjects_total = serializers.IntegerField()


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)
    usage = UsageSerializer(read_only=True)
    limits = LimitsSerializer(read_only=True)
    default_webhook_url = serializers.CharField(max_length=500, allow_blank=True, required=False, help_text="Used for jobs that name no webhook_url.")
    webhook_deliveries_url = serializers.URLField(read_only=True)

    def validate_default_webhook_url(self, value: str) -> str:
        return webhooks.check_webhook_url(value) if value else value


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(read_only=True, help_text="Key of the HMAC-SHA256 in X-Imagesite-Signature.")
    signature_header = serializers.CharField(read_only=True, default=webhooks.SIGNATURE_HEADER)
    timestamp_header = serializers.CharField(read_only=True, default=webhooks.TIMESTAMP_HEADER)


class WebhookAttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    duration_ms = serializers.IntegerField()


class WebhookDeliverySerializer(serializers.ModelSerializer):
    url = LinkField("api-webhook-delivery-detail")
    target_url = serializers.CharField(source="url", read_only=True, help_text="Where the payload is POSTed.")
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = ["id", "url", "event", "target_url", "status", "attempts", "attempt_log", "next_attempt_at", "created_at", "delivered_at", "payload"]
        read_only_fields = fields


def webhook_job_data(job) -> dict:
    """The job as the API shows it, for a webhook payload (links are paths: no request here)."""
    if isinstance(job, Generation):
        return dict(GenerationSerializer(job, context={}).data)
    from .training_serializers import TrainingRunSerializer

    return dict(TrainingRunSerializer(job, context={}).data)
