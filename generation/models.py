from __future__ import annotations

import uuid
from functools import cached_property

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from imagesite.jobs import Job, JobQuerySet, JobStatus, job_finished

from .modelinfo import SCHEDULERS, ModelInfo, describe_model

SCHEDULER_CHOICES = [(key, choice.label) for key, choice in SCHEDULERS.items()]
MAX_SEED = 2**32 - 1


class ModelOrigin(models.TextChoices):
    SETTING = "setting", "IMAGESITE_MODEL"
    FOLDER = "folder", "models folder"
    ADMIN = "admin", "added in the admin"


class BaseModelQuerySet(models.QuerySet):
    def offered(self) -> "BaseModelQuerySet":
        """What users may pick: enabled by the operator and usable (no problem found by the scan)."""
        return self.filter(enabled=True, problem="")


class BaseModel(models.Model):
    """A base checkpoint users may generate with and train on: a diffusers folder, a single
    .safetensors/.ckpt file or a hub id. Rows come from IMAGESITE_MODEL (the `setting` row), from the
    models folder (generation.catalog scans it) or from staff in the admin. Family, size and the
    problem (why it cannot be used) are read from the files, torch-free."""

    name = models.CharField(max_length=200, unique=True)
    path = models.CharField(max_length=1000, unique=True, help_text="A diffusers folder, a .safetensors/.ckpt file or a hub id.")
    origin = models.CharField(max_length=8, choices=ModelOrigin.choices, default=ModelOrigin.ADMIN)
    family = models.CharField(max_length=16, blank=True, help_text="Read from the files, e.g. sd1, sd2, sdxl.")
    family_label = models.CharField(max_length=60, blank=True)
    size_bytes = models.BigIntegerField(default=0, help_text="Size on disk.")
    enabled = models.BooleanField(default=True, help_text="Offered to users (when it has no problem).")
    is_default = models.BooleanField(default=False, help_text="Preselected in the generate and training forms.")
    problem = models.TextField(blank=True, help_text="Why the files cannot be used; such a model is not offered.")
    added_at = models.DateTimeField(auto_now_add=True)
    scanned_at = models.DateTimeField(null=True, blank=True)

    objects = BaseModelQuerySet.as_manager()

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True), name="one_default_base_model")]

    def __str__(self) -> str:
        return f"{self.name} ({self.family_label or 'unknown family'})"

    @property
    def is_offered(self) -> bool:
        return self.enabled and not self.problem

    def worker_source(self) -> str:
        """What a worker loads: the `setting` row stands for the worker's own IMAGESITE_MODEL (a job
        stores what the user chose; each machine resolves the default itself), others their path."""
        return settings.IMAGESITE_MODEL if self.origin == ModelOrigin.SETTING else self.path

    def info(self) -> ModelInfo:
        """Defaults and limits from the files (generation.modelinfo; torch-free, cached)."""
        return describe_model(self.path)


class HiresUpscaler(models.TextChoices):
    LATENT = "latent", "Latent"
    LANCZOS = "lanczos", "Lanczos"


def _input_path(instance: "Generation", filename: str) -> str:
    return f"inputs/{instance.owner_id}/{uuid.uuid4().hex}.upload"


def _mask_path(instance: "Generation", filename: str) -> str:
    return f"inputs/{instance.owner_id}/{uuid.uuid4().hex}-mask.upload"


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
    # The base chosen; model_name stays as the record when the row is removed.
    base_model = models.ForeignKey(BaseModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="generations")
    # "loading" while the worker (re)loads the base model, "rendering" once steps run.
    phase = models.CharField(max_length=16, blank=True)
    webhook_url = models.URLField(blank=True, help_text="POSTed a signed JSON payload when the job ends.")
    # The subject's name stays when the subject is deleted, so its images can say so.
    subject = models.ForeignKey("training.Subject", null=True, blank=True, on_delete=models.SET_NULL, related_name="generations")
    subject_name = models.CharField(max_length=60, blank=True)
    # Images drawn during training as validation samples (they land in the gallery too).
    training_run = models.ForeignKey("training.TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="validation_generations")
    # img2img and inpainting: the input (an upload, or a copy of a gallery image) and its mask. Private,
    # deleted with the job.
    init_image = models.FileField(upload_to=_input_path, max_length=255, blank=True, help_text="img2img/inpainting input image.")
    source_image = models.ForeignKey("GeneratedImage", null=True, blank=True, on_delete=models.SET_NULL, related_name="derived_generations",
                                     help_text="The gallery image the input was taken from, if any.")
    strength = models.FloatField(default=0.75, help_text="Denoising strength of img2img and inpainting (0-1).")
    mask = models.FileField(upload_to=_mask_path, max_length=255, blank=True, help_text="Inpainting mask: white is repainted.")
    mask_blur = models.PositiveSmallIntegerField(default=4, help_text="Mask edge blur in pixels.")
    # Hires fix (AUTOMATIC1111's): render at the size above, upscale by hires_scale, refine with img2img.
    hires_scale = models.FloatField(default=1.0, help_text="1 = no hires fix.")
    hires_upscaler = models.CharField(max_length=16, choices=HiresUpscaler.choices, default=HiresUpscaler.LATENT)
    hires_strength = models.FloatField(default=0.7, help_text="Denoising strength of the hires pass (0-1).")
    hires_steps = models.PositiveSmallIntegerField(default=0, help_text="Steps of the hires pass; 0 = as many as steps.")
    # The prompt's <lora:name:weight> tags and embedding names, resolved when the job was created, so
    # the worker uses exactly what was checked: [{"name", "kind", "id", "weight", "sha256"}, ...].
    loras = models.JSONField(default=list, blank=True)
    embeddings = models.JSONField(default=list, blank=True)

    objects = JobQuerySet.as_manager()

    @property
    def subject_deleted(self) -> bool:
        return bool(self.subject_name) and self.subject_id is None

    class Meta:
        ordering = ["-created_at", "-pk"]
        # The generations list's keyset pages (api.pagination) walk this index from any position.
        indexes = [models.Index(fields=["owner", "-created_at", "-id"], name="generation_owner_newest")]
        constraints = [
            models.CheckConstraint(condition=models.Q(num_images__gte=1, num_images__lte=4), name="generation_num_images_1_4"),
            models.CheckConstraint(condition=models.Q(seed__gte=0, seed__lte=MAX_SEED), name="generation_seed_range"),
        ]

    def __str__(self) -> str:
        return f"{self.prompt[:60]} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("generation-detail", args=[self.pk])

    @property
    def mode(self) -> str:
        """"txt2img", "img2img" (an input image) or "inpaint" (an input and its mask)."""
        return "inpaint" if self.mask else "img2img" if self.init_image else "txt2img"

    def render_settings(self):
        """Everything the worker's pipeline.RenderSettings needs, img2img, inpainting and hires fix included."""
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
            mode=self.mode,
            strength=self.strength,
            mask_blur=self.mask_blur,
            hires_scale=self.hires_scale,
            hires_upscaler=self.hires_upscaler,
            hires_strength=self.hires_strength,
            hires_steps=self.hires_steps,
        )

    @cached_property
    def preview_step(self) -> int | None:
        """The step the live preview shows while the job runs; None when it has none yet or has ended."""
        if self.status != JobStatus.RUNNING:
            return None
        return GenerationPreview.objects.filter(pk=self.pk).values_list("step", flat=True).first()

    def live_preview(self) -> bytes | None:
        """The live preview's JPEG while the job runs, else None."""
        if self.status != JobStatus.RUNNING:
            return None
        image = GenerationPreview.objects.filter(pk=self.pk).values_list("image", flat=True).first()
        return bytes(image) if image is not None else None

    def form_initial(self, image: "GeneratedImage | None" = None) -> dict:
        """The settings as generate-form values ("generate again with these settings"). With one of
        its images: that image's own seed and one image (AUTOMATIC1111's reuse-seed)."""
        fields = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler", "num_images", "subject", "base_model")
        initial = {name: getattr(self, name) for name in fields}
        if image is not None:
            initial.update(seed=image.seed, num_images=1)
        return initial


class GenerationPreview(models.Model):
    """The latest live preview of a running generation: a small JPEG (generation.previews) that the
    worker replaces every half second or so and deletes when the job ends, however it ends.

    A row rather than a file: a worker killed mid-job cannot leave a file behind on shared storage,
    the row goes with its generation (CASCADE) and a job's end removes it (`job_finished`), and every
    machine of a scale-out reads it from the database it already shares. Kept apart from Generation so
    that listing jobs never loads image bytes."""

    generation = models.OneToOneField(Generation, on_delete=models.CASCADE, primary_key=True, related_name="+")
    step = models.PositiveIntegerField()
    image = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)

    @classmethod
    def store(cls, generation_id: int, image: bytes, step: int) -> bool:
        """Replace the preview, only while the job is still running (False otherwise: nothing written)."""
        with transaction.atomic():
            if not Generation.objects.filter(pk=generation_id, status=JobStatus.RUNNING).exists():
                return False
            if not cls.objects.filter(pk=generation_id).update(image=image, step=step, updated_at=timezone.now()):
                cls.objects.create(generation_id=generation_id, image=image, step=step)
        return True

    @classmethod
    def discard(cls, generation_id: int) -> None:
        cls.objects.filter(pk=generation_id).delete()


def _discard_preview(sender, job: Generation, **kwargs) -> None:
    """A job that ended any way (the reaper failing a killed worker's job included) keeps no preview."""
    GenerationPreview.discard(job.pk)


job_finished.connect(_discard_preview, sender=Generation, dispatch_uid="generation-discard-preview")


def subjects_of(owner) -> models.QuerySet:
    """The owner's subjects. The subject model is training's, reached through the foreign key:
    training builds on generation, never the other way round."""
    return Generation._meta.get_field("subject").related_model.objects.for_user(owner)


def usable_subjects(owner) -> models.QuerySet:
    """The owner's subjects that a generation may use (trained ones), each annotated with
    `trained_family` (the family of the base its checkpoint was trained on; blank for runs from
    before base models were recorded: those fit any base)."""
    return subjects_of(owner).ready().with_trained_family()


class GeneratedImageQuerySet(models.QuerySet):
    def for_user(self, user) -> "GeneratedImageQuerySet":
        return self.filter(owner=user)

    def bulk_create(self, objs, *args, **kwargs) -> list:
        """As QuerySet.bulk_create, with each image's owner taken from its generation (save() does the
        same; bulk_create calls no save())."""
        objs = list(objs)
        for image in objs:
            image.take_owner()
        return super().bulk_create(objs, *args, **kwargs)


def _image_path(instance: "GeneratedImage", filename: str) -> str:
    return f"images/{instance.generation.owner_id}/{uuid.uuid4().hex}.png"


def _thumb_path(instance: "GeneratedImage", filename: str) -> str:
    return f"thumbs/{instance.generation.owner_id}/{uuid.uuid4().hex}.png"


class GeneratedImage(models.Model):
    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="images")
    # The generation's owner, copied (save() and bulk_create fill it) so that one index, owner then
    # newest first, serves the gallery and the API list without a join or a sort (issue 18).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generated_images", editable=False)
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
        # Keyset pages (api.pagination.newest_first_page) walk this index from any position.
        indexes = [models.Index(fields=["owner", "-created_at", "-id"], name="image_owner_newest")]

    def __str__(self) -> str:
        return f"{self.generation.prompt[:40]} #{self.index}"

    def take_owner(self) -> None:
        if self.owner_id is None:
            self.owner_id = self.generation.owner_id

    def save(self, *args, **kwargs) -> None:
        self.take_owner()
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("image-detail", args=[self.pk])

    def download_name(self) -> str:
        return f"imagesite-{self.generation_id}-{self.index}-{self.seed}.png"


# --- files users bring for their prompts: LoRAs (<lora:name:0.8>) and textual-inversion embeddings ---
def _prompt_file_path(instance: "PromptFile", filename: str) -> str:
    return f"{instance.folder}/{instance.owner_id}/{uuid.uuid4().hex}.safetensors"


class PromptFile(models.Model):
    """A .safetensors file a user uploaded to use by name in prompts. Private to its owner unless
    staff share it with everyone. Checked (header and keys, torch-free) before it is stored."""

    folder = ""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="%(class)ss")
    name = models.CharField(max_length=100, help_text="As written in prompts.")
    file = models.FileField(upload_to=_prompt_file_path, max_length=255)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    family = models.CharField(max_length=16, blank=True, help_text="The model family it was made for (sd1, sd2, sdxl), when known.")
    shared = models.BooleanField(default=False, help_text="Offered to every user (staff only).")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Lora(PromptFile):
    """A LoRA in kohya or diffusers layout, used as <lora:name:weight>."""

    folder = "loras"
    layout = models.CharField(max_length=16, blank=True, help_text="kohya, diffusers or peft key layout.")

    class Meta(PromptFile.Meta):
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="lora_unique_name_per_owner")]


class Embedding(PromptFile):
    """A textual-inversion embedding, used by writing its name in the prompt."""

    folder = "embeddings"
    vectors = models.PositiveSmallIntegerField(default=1, help_text="Tokens the name stands for.")

    class Meta(PromptFile.Meta):
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="embedding_unique_name_per_owner")]
