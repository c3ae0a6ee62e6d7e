"""What training puts in a user's data export (imagesite.export): each subject's photos (as cleaned
on upload) and the files its training runs made, named as the subject page offers them for download
(the LoRA as <token>.safetensors, the token embedding, a full fine-tune's UNet weights), and the
subjects and runs for jobs.json. Registered from TrainingConfig.ready. Torch-free."""
from __future__ import annotations

from typing import Iterator

from imagesite.export import ArchiveFile, Records, plain_fields, safe_name

from .checkpoint_names import named_for_tools
from .models import Subject, SubjectPhoto, TrainingRun

_JOB_INTERNALS = ("heartbeat_at", "first_step_at", "phase", "progress_step", "progress_total", "checkpoint", "files_dir")


def training_part(user) -> Iterator[ArchiveFile | Records]:
    subjects, runs = [], []
    for subject in Subject.objects.for_user(user).order_by("created_at", "pk"):
        folder = f"subjects/{subject.pk}-{safe_name(subject.name, 'subject')}"
        row = {**plain_fields(subject), "folder": folder, "photos": []}
        for photo in SubjectPhoto.objects.filter(subject=subject).ready().order_by("created_at", "pk"):
            if not photo.image:
                continue
            path = f"{folder}/photos/{photo.pk}.jpg"
            yield ArchiveFile(path, photo.image.name, modified=photo.created_at)
            row["photos"].append({"path": path, **plain_fields(photo, exclude=("subject", "upload", "attempts", "queued_at"))})
        subjects.append(row)
        for run in TrainingRun.objects.filter(subject=subject).order_by("created_at", "pk"):
            run_row = {**plain_fields(run, exclude=_JOB_INTERNALS), "subject": subject.name}
            for key, found in (("checkpoint", run.checkpoint_file()), ("token_embedding", run.token_embedding_file())):
                found = named_for_tools(found, subject.token)
                if found is not None:
                    path = f"{folder}/run-{run.pk}/{found[1]}"
                    yield ArchiveFile(path, found[0], modified=run.finished_at)
                    run_row[key] = path
            runs.append(run_row)
    yield Records("subjects", subjects)
    yield Records("training_runs", runs)
