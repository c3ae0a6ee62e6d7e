"""Serializers for subjects, their photos and training runs. The rules are training's own
(training.rules, and the services for what depends on stored rows), so the pages and the API judge
input the same way (STYLE.md habit 4)."""
from __future__ import annotations

import re

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from api.job_fields import QueuePlaceField
from api.serializers import TEXT_SCHEMA, WEBHOOK_URL_SCHEMA, DescribedCharField, LinkField, ProgressSerializer, StrictSerializer, absolute
from api.webhooks import check_webhook_url

from generation.serializers import BaseModelField

from . import rules as training_rules
from .models import Subject, SubjectPhoto, TrainingMethod, TrainingRun


# --- runs -----------------------------------------------------------------------------------------
class TrainingRunSerializer(serializers.ModelSerializer):
    """A training run as a job: status, phase (class images, then training), progress and loss."""

    url = LinkField("api-training-run-detail")
    cancel_url = LinkField("api-training-run-cancel")
    page_url = LinkField("training-run-detail")
    subject_url = serializers.SerializerMethodField()
    progress = ProgressSerializer(source="*", read_only=True)
    checkpoint_url = serializers.SerializerMethodField()
    token_embedding_url = serializers.SerializerMethodField()
    webhook_url = serializers.CharField(read_only=True, help_text="Blank when none was given.")
    queue = QueuePlaceField()
    retry_url = LinkField("api-training-run-retry")

    class Meta:
        model = TrainingRun
        fields = [
            "id", "url", "cancel_url", "page_url", "subject", "subject_url", "base_model", "base_model_name", "base_family",
            "status", "phase", "progress", "loss",
            "seconds_per_step", "error", "attempts", "method", "options", "checkpoint_size", "checkpoint_url",
            "token_embedding_url", "webhook_url", "created_at", "started_at", "finished_at", "queue", "gpu_seconds", "retry_url",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "base_model": {"help_text": "The base model's id (GET /api/v1/models/); null once removed."},
            "base_model_name": {"help_text": "The base model trained on, kept when it is removed."},
            "base_family": {"help_text": "Generations use the subject only with base models of this family."},
        }

    @extend_schema_field(OpenApiTypes.URI)
    def get_subject_url(self, run: TrainingRun) -> str | None:
        return absolute(self.context, reverse("api-subject-detail", args=[run.subject_id])) if run.subject_id else None

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True, "description": "The LoRA (.safetensors) or UNet weights, once the run succeeded."})
    def get_checkpoint_url(self, run: TrainingRun) -> str | None:
        if not run.checkpoint:
            return None
        return absolute(self.context, reverse("api-training-run-checkpoint", args=[run.pk]))

    @extend_schema_field({
        "type": "string", "format": "uri", "nullable": True,
        "description": "The rare token's learnt embedding, when the run trained one (pivotal tuning): generations use it with the LoRA.",
    })
    def get_token_embedding_url(self, run: TrainingRun) -> str | None:
        if not run.token_embedding_name():
            return None
        return absolute(self.context, reverse("api-training-run-token-embedding", args=[run.pk]))


class TrainingStartSerializer(StrictSerializer):
    """Options of a run. Omitted ones take the defaults that fit the base model."""

    base_model = BaseModelField(required=False, allow_null=True, default=None)
    method = serializers.ChoiceField(choices=TrainingMethod.choices, required=False)
    steps = serializers.IntegerField(min_value=training_rules.STEPS_RANGE[0], max_value=training_rules.STEPS_RANGE[1], required=False)
    learning_rate = serializers.FloatField(min_value=training_rules.LEARNING_RATE_RANGE[0], max_value=training_rules.LEARNING_RATE_RANGE[1], required=False)
    lora_rank = serializers.IntegerField(min_value=training_rules.RANK_RANGE[0], max_value=training_rules.RANK_RANGE[1], required=False)
    train_text_encoder = serializers.BooleanField(required=False)
    prior_preservation = serializers.BooleanField(required=False)
    num_class_images = serializers.IntegerField(min_value=training_rules.CLASS_IMAGES_RANGE[0], max_value=training_rules.CLASS_IMAGES_RANGE[1], required=False)
    prior_loss_weight = serializers.FloatField(min_value=training_rules.PRIOR_LOSS_WEIGHT_RANGE[0], max_value=training_rules.PRIOR_LOSS_WEIGHT_RANGE[1], required=False)
    prior_target = serializers.ChoiceField(choices=training_rules.PRIOR_TARGETS, required=False, help_text="base: the base model's prediction (distillation); images: classic DreamBooth.")
    train_token_embedding = serializers.BooleanField(required=False, help_text="Pivotal tuning: learn the rare token's input embedding too.")
    gradient_checkpointing = serializers.BooleanField(required=False)
    mixed_precision = serializers.ChoiceField(choices=training_rules.MIXED_PRECISIONS, required=False)
    use_8bit_adam = serializers.BooleanField(required=False)
    seed = serializers.IntegerField(min_value=training_rules.SEED_RANGE[0], max_value=training_rules.SEED_RANGE[1], required=False, allow_null=True)
    webhook_url = DescribedCharField(schema=WEBHOOK_URL_SCHEMA, max_length=200, required=False, allow_blank=True, default="", help_text="POSTed a signed JSON payload when the run ends.")

    def validate_webhook_url(self, value: str) -> str:
        return check_webhook_url(value) if value else value

    def validate(self, attrs: dict) -> dict:
        """The arguments of training.services.start_training: only the options the client sent,
        which the service judges (training.rules, as for the page); the worker decides the rest for
        the chosen method and its GPU."""
        webhook_url = attrs.pop("webhook_url", "")
        method = attrs.pop("method", TrainingMethod.LORA)
        base_model = attrs.pop("base_model", None)
        return {"method": method, "options": attrs, "webhook_url": webhook_url, "base_model": base_model}


# --- subjects and photos -------------------------------------------------------------------------
class SubjectPhotoSerializer(serializers.ModelSerializer):
    """A photo: `pending` while a worker checks and crops it, then `ready` (with its image and crop)
    or `rejected` (with the `reason`)."""

    url = serializers.SerializerMethodField()
    image_url = serializers.SerializerMethodField()
    crop_url = serializers.SerializerMethodField()

    class Meta:
        model = SubjectPhoto
        fields = ["id", "url", "status", "reason", "original_name", "caption", "width", "height", "face_found", "image_url", "crop_url", "created_at"]
        read_only_fields = [name for name in fields if name != "caption"]
        extra_kwargs = {"reason": {"help_text": "Why the photo was rejected; blank otherwise."}, "caption": {"help_text": 'What training calls the photo; it names the subject by its token, e.g. "a sks dog on a beach". '
                                                 'Blank: "a photo of <token> <class>".'}}

    def _link(self, route: str, photo: SubjectPhoto) -> str:
        return absolute(self.context, reverse(route, args=[photo.subject_id, photo.pk]))

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, photo: SubjectPhoto) -> str:
        return self._link("api-subject-photo", photo)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True, "description": "The cleaned JPEG, once the photo is ready."})
    def get_image_url(self, photo: SubjectPhoto) -> str | None:
        return self._link("api-subject-photo-image", photo) if photo.is_ready else None

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True, "description": "The square crop training uses, once the photo is ready."})
    def get_crop_url(self, photo: SubjectPhoto) -> str | None:
        return self._link("api-subject-photo-crop", photo) if photo.is_ready else None


class PhotoCaptionSerializer(StrictSerializer):
    caption = serializers.CharField(allow_blank=True, max_length=training_rules.CAPTION_MAX_LENGTH, trim_whitespace=True,
                                    help_text='Names the subject by its token, e.g. "a sks dog on a beach"; blank: "a photo of <token> <class>".')


class PhotoUploadSerializer(serializers.Serializer):
    """Schema of the multipart upload; the files themselves are judged by training.photos."""

    photos = serializers.ListField(child=serializers.FileField(), help_text="JPEG, PNG or WebP; several at once (repeat the field).")


class RejectedPhotoSerializer(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.CharField()


class PhotoUploadResultSerializer(serializers.Serializer):
    accepted = SubjectPhotoSerializer(many=True, help_text="Stored and queued: each is `pending` until a worker has checked it.")
    rejected = RejectedPhotoSerializer(many=True)


class SubjectSerializer(serializers.ModelSerializer):
    url = LinkField("api-subject-detail")
    photos_url = LinkField("api-subject-photos")
    train_url = LinkField("api-subject-train")
    page_url = LinkField("subject-detail")
    state = serializers.SerializerMethodField(help_text="untrained, training or trained (usable in generations).")
    photos_count = serializers.SerializerMethodField()
    latest_run = serializers.SerializerMethodField()
    trained_run = serializers.SerializerMethodField()

    class Meta:
        model = Subject
        fields = [
            "id", "url", "page_url", "name", "token", "class_noun", "prompt_example", "state", "photos_count",
            "photos_url", "train_url", "latest_run", "trained_run", "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "enum": ["untrained", "training", "trained"]})
    def get_state(self, subject: Subject) -> str:
        if subject.is_training():
            return "training"
        return "trained" if subject.trained_run() else "untrained"

    @extend_schema_field({"type": "integer", "description": "Photos ready or still being checked (rejected ones do not count)."})
    def get_photos_count(self, subject: Subject) -> int:
        return sum(photo.is_kept for photo in subject.photos.all())  # the viewsets prefetch the photos

    @extend_schema_field(TrainingRunSerializer(allow_null=True))
    def get_latest_run(self, subject: Subject) -> dict | None:
        run = subject.latest_run()
        return TrainingRunSerializer(run, context=self.context).data if run else None

    @extend_schema_field({"type": "integer", "nullable": True, "description": "The run whose checkpoint generations use."})
    def get_trained_run(self, subject: Subject) -> int | None:
        run = subject.trained_run()
        return run.pk if run else None


def _either_case(rule: re.Pattern) -> dict:
    """The schema of a rule checked after `.lower()` (training.rules), for the text as sent."""
    return {"pattern": rule.pattern.replace("a-z", "A-Za-z").replace(" ", r"\s")}


# The fields as sent are training.services.create_subject's arguments: the service judges the class
# noun and the token (training.rules, as for the page), unique names and tokens, and suggests a token
# when none is sent, under the owner's lock, so simultaneous creates all get one.
class SubjectCreateSerializer(StrictSerializer):
    name = DescribedCharField(schema=TEXT_SCHEMA, max_length=60)
    # validate_class_noun joins the words with single spaces: a class noun may not end in one.
    class_noun = DescribedCharField(schema={"pattern": _either_case(training_rules.CLASS_NOUN_RE)["pattern"].replace("*$", r"*(?<!\s)$")},
                                    max_length=training_rules.CLASS_NOUN_MAX_LENGTH, help_text='What it is: "person", "dog", "shape".')
    token = DescribedCharField(schema=_either_case(training_rules.TOKEN_RE), max_length=32, required=False,
                               help_text="A rare word for the subject in prompts, not an ordinary word the model knows; omit for a suggestion (e.g. sks).")
