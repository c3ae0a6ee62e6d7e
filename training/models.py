from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from imagesite.jobs import Job, JobQuerySet, JobStatus

from .checkpoint_names import TOKEN_EMBEDDING_NAME


class SubjectQuerySet(models.QuerySet):
    def for_user(self, user) -> "SubjectQuerySet":
        return self.filter(owner=user)

    def ready(self) -> "SubjectQuerySet":
        """Subjects with a finished training run, i.e. usable in prompts."""
        return self.filter(runs__status=JobStatus.SUCCEEDED).distinct()

    def with_trained_family(self) -> "SubjectQuerySet":
        """Annotate `trained_family`: the base model family of the run generations use (the newest
        succeeded one, as Subject.trained_run picks); None without one, blank for older runs."""
        newest = TrainingRun.objects.trained().filter(subject=models.OuterRef("pk"))
        return self.annotate(trained_family=models.Subquery(newest.values("base_family")[:1]))

    def with_trained_run(self) -> "SubjectQuerySet":
        """Prefetch each subject's succeeded runs, newest first, so `Subject.trained_run()` reads them
        instead of querying: a list of subjects and their trained runs in two queries, however long."""
        return self.prefetch_related(models.Prefetch("runs", queryset=TrainingRun.objects.trained(), to_attr="succeeded_runs"))


class Subject(models.Model):
    """A user's own concept (a person, a pet, an object), learnt from their photos."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subjects")
    name = models.CharField(max_length=60)
    token = models.CharField(max_length=32, help_text="The rare word that stands for the subject in prompts.")
    class_noun = models.CharField(max_length=40, help_text='What it is: "person", "dog", "shape".')
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SubjectQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "token"], name="subject_token_unique_per_user"),
            models.UniqueConstraint(fields=["owner", "name"], name="subject_name_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.token} {self.class_noun})"

    def get_absolute_url(self) -> str:
        return reverse("subject-detail", args=[self.pk])

    @property
    def prompt_example(self) -> str:
        """A prompt that draws the subject: its first photo caption (what it trained on), else the
        caption training gives an uncaptioned photo."""
        captions = [photo.caption for photo in self.photos.all() if photo.caption and photo.is_ready]
        return captions[0] if captions else f"a photo of {self.token} {self.class_noun}"

    def latest_run(self) -> "TrainingRun | None":
        return self.runs.order_by("-created_at", "-pk").first()

    def trained_run(self) -> "TrainingRun | None":
        """The newest run that produced a checkpoint (what generation uses)."""
        if hasattr(self, "succeeded_runs"):  # prefetched by SubjectQuerySet.with_trained_run()
            return self.succeeded_runs[0] if self.succeeded_runs else None
        return self.runs.trained().first()

    def trained_family(self) -> str:
        """The family of the base its checkpoint was trained on ("" when untrained or unrecorded)."""
        run = self.trained_run()
        return run.base_family if run else ""

    def is_training(self) -> bool:
        return self.runs.active().exists()

    def files_prefix(self) -> str:
        """Storage folder for this subject's derived files (class images, run outputs)."""
        return f"subjects/{self.owner_id}/{self.pk}"


def _photo_path(instance: "SubjectPhoto", filename: str) -> str:
    return f"photos/{instance.subject.owner_id}/{uuid.uuid4().hex}.jpg"


def _crop_path(instance: "SubjectPhoto", filename: str) -> str:
    return f"photos/{instance.subject.owner_id}/{uuid.uuid4().hex}-crop.png"


def _upload_path(instance: "SubjectPhoto", filename: str) -> str:
    return f"photos/{instance.subject.owner_id}/{uuid.uuid4().hex}.upload"


class PhotoStatus(models.TextChoices):
    PENDING = "pending", "Processing…"
    READY = "ready", "Ready"
    REJECTED = "rejected", "Rejected"


# A photo's task is tried this many times (a worker killed while decoding it counts) before the
# photo is rejected: a file that keeps killing the worker must not be handed out forever.
MAX_PHOTO_ATTEMPTS = 3


class SubjectPhotoQuerySet(models.QuerySet):
    def for_user(self, user) -> "SubjectPhotoQuerySet":
        return self.filter(subject__owner=user)

    def ready(self) -> "SubjectPhotoQuerySet":
        return self.filter(status=PhotoStatus.READY)

    def pending(self) -> "SubjectPhotoQuerySet":
        return self.filter(status=PhotoStatus.PENDING)

    def kept(self) -> "SubjectPhotoQuerySet":
        """Photos that count against a subject's cap: ready ones and those still being processed."""
        return self.exclude(status=PhotoStatus.REJECTED)


class SubjectPhoto(models.Model):
    """An uploaded photo. The request stores the raw upload (`upload`) after the checks that need
    no decode, as `pending`; a worker decodes, re-encodes without metadata and crops it, then the
    row is `ready` with `image` and `crop` (the raw file deleted), or `rejected` with a `reason`."""

    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="photos")
    status = models.CharField(max_length=10, choices=PhotoStatus.choices, default=PhotoStatus.PENDING)
    reason = models.TextField(blank=True, help_text="Why the photo was rejected, for the person who uploaded it.")
    upload = models.FileField(upload_to=_upload_path, max_length=255, blank=True, help_text="The raw upload, until processed.")
    image = models.FileField(upload_to=_photo_path, max_length=255, blank=True)
    crop = models.FileField(upload_to=_crop_path, max_length=255, blank=True)
    face_found = models.BooleanField(default=False)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    original_name = models.CharField(max_length=255, blank=True, help_text="Shown to the owner only; never used as a path.")
    # Of the raw upload's bytes: the same file uploaded to the subject again is noticed (blank on
    # photos from before it was recorded).
    content_sha256 = models.CharField(max_length=64, blank=True)
    caption = models.CharField(max_length=200, blank=True, help_text='Describes the photo with the token, e.g. "a sks dog on a beach".')
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(default=timezone.now, help_text="When its processing task was last queued.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SubjectPhotoQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]

    @property
    def is_ready(self) -> bool:
        return self.status == PhotoStatus.READY

    @property
    def is_kept(self) -> bool:
        """Counts against the subject's cap, as SubjectPhotoQuerySet.kept() selects."""
        return self.status != PhotoStatus.REJECTED

    def enqueue(self) -> None:
        """Queue training.tasks.process_photo for this photo on the default cluster (the row must be
        committed: call it from transaction.on_commit inside a transaction)."""
        from django_q.tasks import async_task

        async_task("training.tasks.process_photo", self.pk, task_name=f"photo-{self.pk}")

    def start_attempt(self) -> bool:
        """Count a processing attempt of a pending photo; False when it is no longer pending (or
        gone), so a redelivered task does nothing."""
        updated = SubjectPhoto.objects.filter(pk=self.pk, status=PhotoStatus.PENDING).update(attempts=models.F("attempts") + 1)
        if updated:
            self.attempts += 1
        return bool(updated)

    def mark_ready(self, *, image: str, crop: str, width: int, height: int, face_found: bool, caption: str) -> bool:
        """pending → ready with the processed files' storage names (the raw upload is no longer
        referenced). A conditional UPDATE: False when the row was rejected, already made ready by a
        duplicate task, or deleted meanwhile; the caller then owns the files it wrote."""
        return bool(SubjectPhoto.objects.filter(pk=self.pk, status=PhotoStatus.PENDING).update(
            status=PhotoStatus.READY, image=image, crop=crop, width=width, height=height, face_found=face_found,
            caption=caption, upload="", reason="",
        ))

    def reject(self, reason: str) -> bool:
        """pending → rejected with a reason a person understands; False when no longer pending."""
        return bool(SubjectPhoto.objects.filter(pk=self.pk, status=PhotoStatus.PENDING).update(
            status=PhotoStatus.REJECTED, reason=reason, upload=""
        ))


class TrainingMethod(models.TextChoices):
    LORA = "lora", "LoRA"
    FULL = "full", "Full fine-tune"


class TrainingRunQuerySet(JobQuerySet):
    def for_user(self, user) -> "TrainingRunQuerySet":
        return self.filter(subject__owner=user)

    def trained(self) -> "TrainingRunQuerySet":
        """Succeeded runs (each holds a checkpoint), newest first: a subject's first is the one
        generation uses (Subject.trained_run)."""
        return self.filter(status=JobStatus.SUCCEEDED).order_by("-finished_at", "-pk")


class TrainingRun(Job):
    """One DreamBooth run of a subject, on its own django-q2 cluster ("training")."""

    task_path = "training.tasks.run_training"
    cluster = "training"
    owner_path = "subject__owner"  # for the fair queue (imagesite.queue)

    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="runs")
    method = models.CharField(max_length=8, choices=TrainingMethod.choices, default=TrainingMethod.LORA)
    # The base it trains on; base_model_name and base_family stay as the record when the row goes.
    base_model = models.ForeignKey("generation.BaseModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs")
    base_model_name = models.CharField(max_length=200, blank=True)
    base_family = models.CharField(max_length=16, blank=True, help_text="Generations may use the checkpoint only with a base of this family.")
    options = models.JSONField(default=dict, help_text="TrainingOptions overrides chosen by the user.")
    phase = models.CharField(max_length=16, blank=True)  # "waiting_gpu" | "preparing_model" | "class_images" | "training"
    loss = models.FloatField(null=True, blank=True)
    seconds_per_step = models.FloatField(null=True, blank=True)
    checkpoint = models.CharField(max_length=255, blank=True, help_text="Storage name of the LoRA file or UNet folder.")
    checkpoint_size = models.BigIntegerField(default=0)
    files_dir = models.CharField(max_length=255, blank=True, help_text="Storage folder of this run's outputs.")
    webhook_url = models.URLField(blank=True, help_text="POSTed a signed JSON payload when the job ends.")

    objects = TrainingRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.subject} run {self.pk} ({self.status})"

    @property
    def owner(self):
        return self.subject.owner

    @property
    def owner_id(self) -> int:
        return self.subject.owner_id

    def before_retry(self) -> None:
        """imagesite.queue.retry_job: one run of a subject at a time, as when starting one."""
        from imagesite.conflicts import conflict

        if self.subject.is_training():
            raise conflict("This subject is already training.")

    def get_absolute_url(self) -> str:
        return reverse("training-run-detail", args=[self.pk])

    def token_embedding_name(self) -> str | None:
        """Storage name of the run's learnt token embedding (pivotal tuning), None without one."""
        from django.core.files.storage import default_storage

        if not (self.checkpoint and self.files_dir):
            return None
        name = f"{self.files_dir}/{TOKEN_EMBEDDING_NAME}"
        return name if default_storage.exists(name) else None

    def token_embedding_file(self) -> tuple[str, str] | None:
        """(storage name, download file name) of the token embedding, as checkpoint_file."""
        name = self.token_embedding_name()
        if name is None:
            return None
        subject = self.subject
        return name, f"{subject.token}-embedding-run{self.pk}.safetensors"

    def checkpoint_file(self) -> tuple[str, str] | None:
        """(storage name, download file name) of the file a user downloads: the LoRA .safetensors,
        or the fine-tuned UNet's weights. None when the run has no checkpoint (any more)."""
        from pathlib import Path

        from django.core.files.storage import default_storage

        if not self.checkpoint:
            return None
        name = self.checkpoint if self.method == TrainingMethod.LORA else f"{self.checkpoint}/unet/diffusion_pytorch_model.safetensors"
        if not default_storage.exists(name):
            return None
        subject = self.subject
        return name, f"{subject.token}-{subject.class_noun.replace(' ', '-')}-{self.method}-run{self.pk}{Path(name).suffix}"

