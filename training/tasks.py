"""django-q2 tasks for training runs (cluster "training"): thin, like generation's. Photo intake
(process_photo, requeue_stale_photos) runs on the default cluster: it is seconds of CPU per photo."""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from generation.modelinfo import describe_model

from imagesite.files import delete_tree_on_commit
from imagesite.jobs import JobStatus, ProgressReporter
from imagesite.queue import run_next
from imagesite.runner import off_the_gpu_clock

from .captions import suggest_caption
from .models import MAX_PHOTO_ATTEMPTS, PhotoStatus, SubjectPhoto, TrainingRun
from .photos import PhotoRejected, check_and_prepare

log = logging.getLogger("training.tasks")


class TrainingReporter:
    """Progress callback of the training loop: progress, phase and loss through the job runner's
    throttled reporter (which also notices a cancel); validation images go to the gallery as
    finished generations of the subject."""

    def __init__(self, run: TrainingRun, options, interval_s: float = 0.5):
        self.run, self.options = run, options
        self.report = ProgressReporter(run, interval_s=interval_s)

    def __call__(self, progress) -> None:
        if progress.message:  # e.g. the lower-memory retry after an out-of-memory
            log.warning("training run %s: %s", self.run.pk, progress.message)
        if progress.validation_images:
            self._save_validation_images(progress)
        self.report(
            progress.step, progress.total, phase=progress.phase, loss=progress.loss,
            seconds_per_step=progress.seconds_per_step,
            pace_starts=progress.phase == "training",  # the ETA's pace leaves out the class images
        )

    def _save_validation_images(self, progress) -> None:
        from generation.pipeline import RenderSettings, encode_for_gallery
        from generation.services import record_finished_images

        info = describe_model(run_base_source(self.run))
        subject = self.run.subject
        model_name = f"{self.run.base_model_name or info.name} + {subject.name}"
        steps, seed = self.options.validation_inference_steps, self.options.seed
        for prompt, image in zip(progress.validation_prompts, progress.validation_images):
            settings_ = RenderSettings(prompt, "", seed, steps, 7.5, image.width, image.height, info.scheduler, 1)
            record_finished_images(
                owner=subject.owner, subject=subject, training_run=self.run, prompt=f"{prompt} (training step {progress.step})",
                seed=seed, steps=steps, guidance_scale=7.5, scheduler=info.scheduler, model_name=model_name,
                pngs=encode_for_gallery([image], settings_, model_name, subject_name=subject.name), size=(image.width, image.height),
                base_model=self.run.base_model,
            )


def run_base_source(run: TrainingRun) -> str:
    """What a run trains on: its base model's files (the default row: this worker's own
    IMAGESITE_MODEL); a run from before bases were recorded trains on IMAGESITE_MODEL."""
    return run.base_model.worker_source() if run.base_model_id else settings.IMAGESITE_MODEL


def run_training(run_id: int) -> str:
    from .dreambooth.progress import TrainingCanceled, TrainingError

    # run_id only wakes this worker: it trains the next run in fair order (imagesite.queue).
    return run_next(TrainingRun, _train, label="Training", readable=(TrainingError,), canceled=(TrainingCanceled,), cleanup=_discard_outputs)


def _train(run: TrainingRun) -> None:
    """Train the subject's photos with the options the user chose, resolved here, on the machine
    (and GPU) that trains; store the checkpoint and succeed."""
    from .dreambooth.devices import default_options_for
    from .dreambooth.loop import train_dreambooth
    from .dreambooth.progress import TrainingCanceled

    subject = run.subject
    run.files_dir = f"{subject.files_prefix()}/runs/{run.pk}"
    run.save(update_fields=["files_dir"])
    output_dir = Path(default_storage.path(run.files_dir))
    photos = list(subject.photos.ready())
    base = run_base_source(run)
    options = default_options_for(base, method=run.method, **run.options, validation_prompts=(subject.prompt_example,))
    images = [_training_image(photo, options.resolution) for photo in photos]
    options = replace(options, validation_every=max(1, options.steps // 4))  # four rounds of validation images
    with _device_turn(run):  # on a GPU shared with the generation worker: take turns
        result = train_dreambooth(
            base_model=base, instance_images=images, token=subject.token,
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


@contextlib.contextmanager
def _device_turn(run: TrainingRun) -> Iterator[None]:
    """Hold the training GPU's lease for the run (generation.gpu_lease): a generation worker on the
    same GPU finishes its job, drops its pipeline and waits. Meanwhile the run page says why it waits."""
    from generation.gpu_lease import WAITING_FOR_GPU, DeviceLease, lease_enabled
    from generation.gpus import current_settings, worker_device

    from .dreambooth.progress import TrainingCanceled

    device = worker_device("training")
    if not lease_enabled(device):
        yield
        return

    def waiting(holder: str) -> None:
        run.report_progress(0, 0, pace_starts=False, phase=WAITING_FOR_GPU)

    def stop_if_canceled() -> None:
        if run.is_canceled():
            raise TrainingCanceled()

    with contextlib.ExitStack() as turn:
        with off_the_gpu_clock():  # the wait is not the run's GPU time
            turn.enter_context(DeviceLease(device, "training", current_settings().lock_dir).held(
                on_wait=waiting, should_stop=stop_if_canceled))
        yield


def _training_image(photo, resolution: int) -> Image.Image:
    """The photo's square crop, or, when the crop was cut for a smaller model than this run's base
    (the demo's 64 px crop for an SDXL run), a new face-centred crop from the cleaned full photo."""
    crop = _open_rgb(photo.crop)
    if min(crop.size) >= resolution or not photo.image:
        return crop
    from .photos import face_centred_crop

    return face_centred_crop(_open_rgb(photo.image), resolution)[0]


def _open_rgb(field_file) -> Image.Image:
    with field_file.open("rb") as f:
        return Image.open(f).convert("RGB")


def _discard_outputs(run: TrainingRun) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(checkpoint="", checkpoint_size=0)
    delete_tree_on_commit(run.files_dir)


# --- photo intake (default cluster) ---------------------------------------------------------------
PHOTO_ERROR = "This photo could not be processed (an error on our side); please upload it again."


def process_photo(photo_id: int) -> str:
    """Decode, clean and crop one pending photo, then mark it ready, or rejected with its reason."""
    photo = SubjectPhoto.objects.select_related("subject").filter(pk=photo_id).first()
    if photo is None or photo.status != PhotoStatus.PENDING or not photo.start_attempt():
        return "nothing to do"
    if photo.attempts > MAX_PHOTO_ATTEMPTS:
        _reject_photo(photo, "Processing this photo stopped the worker every time; please upload a smaller photo.")
        return "rejected"
    try:
        return _prepare_photo(photo)
    except PhotoRejected as exc:
        _reject_photo(photo, exc.reason)
        return "rejected"
    except Exception:  # noqa: BLE001 - any failure must end the photo, readably (no path, no traceback)
        log.exception("photo %s could not be processed", photo.pk)
        _reject_photo(photo, PHOTO_ERROR)
        return "failed"


def _prepare_photo(photo: SubjectPhoto) -> str:
    """Files first, row after: the cleaned JPEG and the crop are stored under new names, then one
    conditional UPDATE makes the row ready; a row that moved on or vanished meanwhile gets nothing
    and the files just written are removed."""
    subject, raw = photo.subject, photo.upload.name
    info = describe_model(settings.IMAGESITE_MODEL)
    with photo.upload.open("rb") as f:
        prepared = check_and_prepare(f.read(), resolution=info.native_size)
    caption = suggest_caption(Image.open(io.BytesIO(prepared.crop_bytes)), token=subject.token,
                              class_noun=subject.class_noun, backgrounds=info.caption_backgrounds)
    written = []
    try:
        photo.image.save("photo.jpg", ContentFile(prepared.image_bytes), save=False)
        written.append(photo.image.name)
        photo.crop.save("crop.png", ContentFile(prepared.crop_bytes), save=False)
        written.append(photo.crop.name)
        ready = photo.mark_ready(image=photo.image.name, crop=photo.crop.name, width=prepared.width, height=prepared.height,
                                 face_found=prepared.face_found, caption=caption)
    except BaseException:
        _delete_files(written)
        raise
    if not ready:
        _delete_files(written)
        return "nothing to do"
    _delete_files([raw])
    return "ready"


def _reject_photo(photo: SubjectPhoto, reason: str) -> bool:
    raw = photo.upload.name
    if not photo.reject(reason):
        return False  # deleted (its signal removed the upload) or finished by a duplicate task
    _delete_files([raw])
    return True


def _delete_files(names: list[str]) -> None:
    for name in names:
        if name:
            default_storage.delete(name)


def requeue_stale_photos(older_than_s: float = 300, give_up_after_s: float = 3600) -> dict[str, int]:
    """Photos still pending because their task was lost (a worker killed mid-decode, a broker that
    dropped the message): queue them again when their task was queued over `older_than_s` ago, and
    reject those uploaded over `give_up_after_s` ago or tried MAX_PHOTO_ATTEMPTS times. Scheduled
    every minute (training.apps). A duplicate task is harmless: only one can move the row on."""
    now = timezone.now()
    counts = {"requeued": 0, "rejected": 0}
    stale = SubjectPhoto.objects.pending().filter(queued_at__lt=now - timedelta(seconds=older_than_s))
    for photo in stale:
        if photo.created_at < now - timedelta(seconds=give_up_after_s) or photo.attempts >= MAX_PHOTO_ATTEMPTS:
            counts["rejected"] += _reject_photo(photo, "Processing this photo did not finish; please upload it again.")
        elif SubjectPhoto.objects.filter(pk=photo.pk, status=PhotoStatus.PENDING, queued_at=photo.queued_at).update(queued_at=now):
            photo.enqueue()
            counts["requeued"] += 1
    if any(counts.values()):
        log.warning("stale photos: %s", counts)
    return counts
