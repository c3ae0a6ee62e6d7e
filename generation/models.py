from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse

from imagesite.jobs import Job, JobQuerySet

from .modelinfo import SCHEDULERS

SCHEDULER_CHOICES = [(key, choice.label) for key, choice in SCHEDULERS.items()]
MAX_SEED = 2**32 - 1


class Generation(Job):
    """One request: a prompt and its settings, rendered into 1-4 images by the worker."""

    task_path = "generation.tasks.run_generation"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations")
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    seed = models.BigIntegerField(help_text="The seed of the first image; image i uses seed + i.")
    steps = models.PositiveSmallIntegerField()
    guidance_scale = models.FloatField()
    width = models.PositiveSmallIntegerField()
    height = models.PositiveSmallIntegerField()
    scheduler = models.CharField(max_length=32, choices=SCHEDULER_CHOICES)
    num_images = models.PositiveSmallIntegerField(default=1)
    model_name = models.CharField(max_length=200, blank=True)
    webhook_url = models.URLField(blank=True, help_text="POSTed a signed JSON payload when the job ends.")
    # The subject's name stays when the subject is deleted, so its images can say so.
    subject = models.ForeignKey("training.Subject", null=True, blank=True, on_delete=models.SET_NULL, related_name="generations")
    subject_name = models.CharField(max_length=60, blank=True)
    # Images drawn during training as validation samples (they land in the gallery too).
    training_run = models.ForeignKey("training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="validation_generations")

    objects = JobQuerySet.as_manager()

    @property
    def subject_deleted(self) -> bool:
        return bool(self.subject_name) and self.subject_id is None

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=models.Q(num_images__gte=1, num_images__lte=4), name="generation_num_images_1_4"),
            models.CheckConstraint(condition=models.Q(seed__gte=0, seed__lte=MAX_SEED), name="generation_seed_range"),
        ]

    def __str__(self) -> str:
        return f"{self.prompt[:60]} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("generation-detail", args=[self.pk])

    def render_settings(self):
        from .pipeline import RenderSettings  # worker side only: pipeline imports torch

        return RenderSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,
            num_images=self.num_images,
        )

    def form_initial(self) -> dict:
        """The settings as generate-form values ("generate again with these settings")."""
        fields = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler", "num_images", "subject")
        return {name: getattr(self, name) for name in fields}


def subjects_of(owner) -> models.QuerySet:
    """The owner's subjects. The subject model is training's, reached through the foreign key:
    training builds on generation, never the other way round."""
    return Generation._meta.get_field("subject").related_model.objects.for_user(owner)


def usable_subjects(owner) -> models.QuerySet:
    """The owner's subjects that a generation may use (trained ones)."""
    return subjects_of(owner).ready()


class GeneratedImageQuerySet(models.QuerySet):
    def for_user(self, user) -> "GeneratedImageQuerySet":
        return self.filter(generation__owner=user)

    def search(self, text: str) -> "GeneratedImageQuerySet":
        text = text.strip()
        return self.filter(generation__prompt__icontains=text) if text else self


def _image_path(instance: "GeneratedImage", filename: str) -> str:
    return f"images/{instance.generation.owner_id}/{uuid.uuid4().hex}.png"


def _thumb_path(instance: "GeneratedImage", filename: str) -> str:
    return f"thumbs/{instance.generation.owner_id}/{uuid.uuid4().hex}.png"


class GeneratedImage(models.Model):
    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveSmallIntegerField()
    seed = models.BigIntegerField()
    file = models.FileField(upload_to=_image_path, max_length=255)
    thumbnail = models.FileField(upload_to=_thumb_path, max_length=255)
    width = models.PositiveSmallIntegerField()
    height = models.PositiveSmallIntegerField()
    favourite = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = GeneratedImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["generation", "index"], name="image_unique_index")]

    def __str__(self) -> str:
        return f"{self.generation.prompt[:40]} #{self.index}"

    @property
    def owner_id(self) -> int:
        return self.generation.owner_id

    def get_absolute_url(self) -> str:
        return reverse("image-detail", args=[self.pk])

    def download_name(self) -> str:
        return f"imagesite-{self.generation_id}-{self.index}-{self.seed}.png"
