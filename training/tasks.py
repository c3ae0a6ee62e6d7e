"""django-q2 task for training runs (cluster "training"): thin, like generation's."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from imagesite.files import delete_tree_on_commit
from imagesite.jobs import JobStatus, heartbeat

from .models import TrainingRun

log = logging.getLogger("training.tasks")


class TrainingReporter:
    """Progress callback: progress, loss and phase at most every `interval_s`; validation images go
    to the gallery as finished generations of the subject."""

    def __init__(self, run: TrainingRun, options, interval_s: float = 0.5):
        self.run, self.options, self.interval_s = run, options, interval_s
        self.last_write = 0.0
        self.training_started = False

    def __call__(self, progress) -> None:
        now = time.monotonic()
        if progress.validation_images:
            self._save_validation_images(progress)
        if progress.step >= progress.total or now - self.last_write >= self.interval_s:
            self.last_write = now
            fields = dict(
                progress_step=progress.step, progress_total=progress.total, phase=progress.phase,
                loss=progress.loss, seconds_per_step=progress.seconds_per_step,
            )
            if progress.phase == "training" and not self.training_started:
                self.training_started = True  # the ETA's pace starts here, after the class images
                fields["first_step_at"] = timezone.now()
            TrainingRun.objects.filter(pk=self.run.pk, status=JobStatus.RUNNING).update(**fields)

    def _save_validation_images(self, progress) -> None:
        from generation.models import Generation
        from generation.pipeline import RenderSettings, encode_for_gallery
        from generation.rules import current_model
        from generation.services import store_images

        info = current_model()
        subject = self.run.subject
        for prompt, image in zip(progress.validation_prompts, progress.validation_images):
            generation = Generation.objects.create(
                owner=subject.owner, prompt=f"{prompt} (training step {progress.step})", seed=self.options.seed,
                steps=self.options.validation_inference_steps, guidance_scale=7.5, width=image.width, height=image.height,
                scheduler=info.scheduler, num_images=1, model_name=f"{info.name} + {subject.name}",
                status=JobStatus.RUNNING, subject=subject, subject_name=subject.name, training_run=self.run,
            )
            s = RenderSettings(prompt, "", generation.seed, generation.steps, 7.5, image.width, image.height, info.scheduler, 1)
            store_images(generation, encode_for_gallery([image], s, generation.model_name), [generation.seed], finish=generation.succeed)


def run_training(run_id: int) -> str:
    run = TrainingRun.objects.select_related("subject", "subject__owner").filter(pk=run_id).first()
    if run is None:
        return "deleted before it ran"
    if not run.claim():
        run.refresh_from_db()
        if run.status == JobStatus.QUEUED:
            run.fail(f"Gave up after {run.attempts} attempts: the worker kept stopping during this run.")
        return f"not run: {run.status}"
    from .dreambooth import TrainingCanceled, TrainingError, default_options_for, train_dreambooth

    subject = run.subject
    run.files_dir = f"{subject.files_prefix()}/runs/{run.pk}"
    run.save(update_fields=["files_dir"])
    output_dir = Path(default_storage.path(run.files_dir))
    try:
        with heartbeat(run):
            photos = list(subject.photos.all())
            images = [_open_rgb(photo.crop) for photo in photos]
            steps = int(run.options.get("steps") or default_options_for(settings.IMAGESITE_MODEL, method=run.method).steps)
            options = default_options_for(
                settings.IMAGESITE_MODEL, method=run.method, **run.options,
                validation_every=max(1, steps // 4), validation_prompts=(subject.prompt_example,),
            )
            result = train_dreambooth(
                base_model=settings.IMAGESITE_MODEL, instance_images=images, token=subject.token,
                class_noun=subject.class_noun, options=options, output_dir=output_dir,
                instance_prompts=[photo.caption or None for photo in photos],
                progress=TrainingReporter(run, options),
                should_cancel=lambda: not TrainingRun.objects.filter(pk=run.pk, status=JobStatus.RUNNING).exists(),
                class_images_dir=Path(default_storage.path(f"{subject.files_prefix()}/class_images")),
            )
            run.checkpoint = str(Path(run.files_dir) / Path(result.checkpoint_path).relative_to(output_dir))
            run.checkpoint_size = result.size_bytes
            run.loss = result.final_loss
            run.seconds_per_step = result.seconds_per_step
            run.save(update_fields=["checkpoint", "checkpoint_size", "loss", "seconds_per_step"])
            if not run.succeed():
                raise TrainingCanceled()
    except TrainingCanceled:
        _discard_outputs(run)
        return "canceled"
    except TrainingError as exc:
        run.fail(str(exc))
        _discard_outputs(run)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - any failure must end the run, readably
        log.exception("training run %s failed", run.pk)
        run.fail(f"Training failed: {type(exc).__name__}: {str(exc)[:300]}")
        _discard_outputs(run)
        return "failed"
    return "succeeded"


def _open_rgb(field_file) -> Image.Image:
    with field_file.open("rb") as f:
        return Image.open(f).convert("RGB")


def _discard_outputs(run: TrainingRun) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint="", checkpoint_size=0)
    delete_tree_on_commit(run.files_dir)
