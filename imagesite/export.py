"""A user's data export: one zip archive of everything they own, made by a django-q2 worker.

The bottom layer knows no app's models, so the archive is made of parts each app contributes:
generation and training register a part from their AppConfig.ready (`register_part`), a function
that takes the user and yields `ArchiveFile`s (a stored file, streamed into the zip, or bytes) and
`Records` (rows for the archive's `jobs.json`). This module adds `account.json` and a README.

The worker writes the zip under a partial name and renames it when complete, so a failed or killed
export leaves no half archive behind; every file is streamed, never held whole in memory. Stored files
are copied byte for byte (PNG metadata intact) and not compressed again (PNG, JPEG and safetensors
gain nothing from it); JSON and text are deflated.

Runs on the default cluster, beside generations and photo processing: an export is disk I/O of
seconds to a few minutes, like the webhooks and photos already there; the training cluster would keep
it waiting behind hours-long runs, and a cluster of its own would be one more process every install
must remember to start, or exports would wait forever.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpResponse
from django.utils import timezone

from . import quotas
from .files import private_file_response
from .jobs import FINISHED_STATUSES, JobCanceled, JobStatus, ProgressReporter, ensure_every_minute, reap_stale
from .runner import run_job
from .models import DataExport

log = logging.getLogger(__name__)


# --- what the apps contribute ----------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveFile:
    """One file in the archive: a stored file (`storage_name`, streamed) or `data`. `path` is its
    place in the archive ("images/x.png"); `modified` its date there."""

    path: str
    storage_name: str = ""
    data: bytes | None = None
    modified: datetime | None = None


@dataclass(frozen=True)
class Records:
    """Rows for the archive's jobs.json, under `key` ("generations", "subjects", ...)."""

    key: str
    rows: list[dict] = field(default_factory=list)


Part = Callable[[object], Iterable["ArchiveFile | Records"]]
_PARTS: dict[str, Part] = {}


def register_part(name: str, part: Part) -> None:
    """Add (or replace, by `name`) what an app puts in every user's archive."""
    _PARTS[name] = part


def registered_parts() -> dict[str, Part]:
    return dict(_PARTS)


def plain_fields(obj: models.Model, *, exclude: Iterable[str] = ()) -> dict:
    """The row's own values for the JSON: every concrete field but files (their place in the archive
    says more than a server path) and `exclude`; a foreign key as `<name>_id`."""
    skipped = {"owner", *exclude}
    values = {}
    for f in obj._meta.concrete_fields:
        if f.name in skipped or isinstance(f, models.FileField):
            continue
        values[f.attname] = getattr(obj, f.attname)
    return values


def safe_name(name: str, fallback: str = "file") -> str:
    """A name usable as one archive path segment on every system (Windows included)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or fallback


# --- the service both pages and the API call --------------------------------------------------------
def latest_export(user) -> DataExport | None:
    return DataExport.objects.for_user(user).first()


def archive_response(export: DataExport) -> HttpResponse:
    """The archive as a zip attachment named for its owner and date: the one download the page, the
    API and the admin all answer with, once the caller checked the export is its reader's and neither
    missing nor expired."""
    return private_file_response(export.file, download_name=export.download_name(), content_type="application/zip")


def request_export(*, user) -> tuple[DataExport, bool]:
    """Queue an export of everything `user` owns; (export, True). One at a time: while one is queued
    or running, that one is returned instead, (export, False). Exports that expired or failed are
    deleted with their files first (a finished, unexpired archive stays until the new one is done)."""
    with transaction.atomic():
        quotas.lock_user(user)  # two requests at once make one export
        active = DataExport.objects.for_user(user).active().first()
        if active is not None:
            return active, False
        _delete(DataExport.objects.for_user(user).filter(_gone()))
        export = DataExport.objects.create(owner=user)
        export.enqueue()
    return export, True


def _gone() -> models.Q:
    """Finished exports with nothing left to download: expired, or ended without an archive."""
    return models.Q(status__in=FINISHED_STATUSES) & (
        models.Q(expires_at__lte=timezone.now()) | ~models.Q(status=JobStatus.SUCCEEDED)
    )


def _delete(queryset) -> int:
    """Delete exports one by one, so each row's post_delete removes its files (models.py)."""
    count = 0
    for export in queryset:
        export.delete()
        count += 1
    return count


def ensure_sweep_schedule(using: str = "default", **kwargs) -> None:
    """post_migrate receiver (imagesite.apps): sweep_exports runs every minute."""
    ensure_every_minute("imagesite.export.sweep_exports", "sweep data exports", using)


def sweep_exports() -> dict[str, int]:
    """Every minute (django-q2 schedule, made after migrate): delete archives whose link expired and
    exports that ended without one a while ago, and requeue (or fail) an export whose worker died."""
    now = timezone.now()
    keep = timedelta(hours=settings.IMAGESITE_EXPORT_HOURS)
    expired = DataExport.objects.filter(status__in=FINISHED_STATUSES).filter(
        models.Q(expires_at__lte=now) | (~models.Q(status=JobStatus.SUCCEEDED) & models.Q(finished_at__lte=now - keep))
    )
    cutoff = now - timedelta(seconds=settings.IMAGESITE_STALE_AFTER_S)
    stale = reap_stale(DataExport, cutoff, "The worker stopped while making this archive; prepare a new one.")
    return {"deleted": _delete(expired), **stale}


# --- the worker's task -------------------------------------------------------------------------------
def run_export(export_id: int) -> str:
    job = DataExport.objects.select_related("owner").filter(pk=export_id).first()
    return run_job(job, _make_archive, label="Export", cleanup=_remove_partial)


def _make_archive(job: DataExport) -> None:
    files, records = _collect(job.owner)
    files = [*_own_files(job, records), *files]
    report = ProgressReporter(job)
    partial = Path(default_storage.path(job.partial_name()))
    partial.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    with zipfile.ZipFile(partial, "w", allowZip64=True) as archive:
        for done, entry in enumerate(_unique_paths(files), start=1):
            if not _write(archive, entry):
                skipped.append(entry.path)
            report(done, len(files))
        if skipped:  # deleted while the export ran (an image the user removed meanwhile)
            archive.writestr(_info("SKIPPED.txt", None), "Deleted while the archive was made:\n" + "\n".join(skipped) + "\n",
                             compress_type=zipfile.ZIP_DEFLATED)
    final = job.file.field.generate_filename(job, "archive.zip")
    os.replace(partial, default_storage.path(final))  # complete, then visible: never a half archive
    try:
        with transaction.atomic():  # files before rows: the row names a complete archive or none
            stored = DataExport.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                file=final, size_bytes=os.path.getsize(default_storage.path(final)),
                expires_at=timezone.now() + timedelta(hours=settings.IMAGESITE_EXPORT_HOURS),
            )
            if not (stored and job.succeed()):  # canceled, or the account deleted meanwhile
                raise JobCanceled()
            # The new archive replaces the user's older ones.
            _delete(DataExport.objects.for_user(job.owner_id).exclude(pk=job.pk).filter(status__in=FINISHED_STATUSES))
    except BaseException:
        default_storage.delete(final)
        raise


def _collect(user) -> tuple[list[ArchiveFile], dict[str, list[dict]]]:
    files: list[ArchiveFile] = []
    records: dict[str, list[dict]] = {}
    for _name, part in sorted(_PARTS.items()):
        for item in part(user):
            if isinstance(item, Records):
                records.setdefault(item.key, []).extend(item.rows)
            else:
                files.append(item)
    return files, records


def _json(value) -> bytes:
    return json.dumps(value, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False).encode()


def _own_files(job: DataExport, records: dict[str, list[dict]]) -> list[ArchiveFile]:
    user, now = job.owner, timezone.now()
    account = {
        "username": user.get_username(), "email": getattr(user, "email", ""),
        "date_joined": getattr(user, "date_joined", None), "exported_at": now,
        "contents": {key: len(rows) for key, rows in records.items()},
    }
    readme = (
        f"Everything the account {user.get_username()} held on imagesite, exported {now:%Y-%m-%d %H:%M} UTC.\n\n"
        "account.json   the account\n"
        "jobs.json      your generations with their settings, subjects and their photos, training runs, LoRAs and\n"
        "               embeddings; each file's place in this archive is named in its row (\"path\", \"checkpoint\", ...)\n"
        "images/        your images as made: each PNG keeps its settings in its `parameters` text chunk\n"
        "subjects/      each subject's photos and the files its training runs made (LoRA, token embedding)\n"
        "loras/, embeddings/, inputs/   files you uploaded\n"
    )
    return [ArchiveFile("README.txt", data=readme.encode()), ArchiveFile("account.json", data=_json(account)),
            ArchiveFile("jobs.json", data=_json(records))]


def _unique_paths(files: list[ArchiveFile]) -> Iterator[ArchiveFile]:
    """Each entry under a path no other has (a second "x.png" becomes "x-2.png")."""
    seen: set[str] = set()
    for entry in files:
        path, n = entry.path, 1
        while path.lower() in seen:
            n += 1
            stem, dot, suffix = entry.path.rpartition(".")
            path = f"{stem}-{n}.{suffix}" if dot and "/" not in suffix else f"{entry.path}-{n}"
        seen.add(path.lower())
        yield entry if path == entry.path else ArchiveFile(path, entry.storage_name, entry.data, entry.modified)


_DEFLATED_SUFFIXES = (".json", ".txt", ".csv")


def _info(path: str, modified: datetime | None) -> zipfile.ZipInfo:
    when = timezone.localtime(modified or timezone.now(), timezone.get_fixed_timezone(0))
    info = zipfile.ZipInfo(path, date_time=(max(1980, when.year), when.month, when.day, when.hour, when.minute, when.second))
    info.compress_type = zipfile.ZIP_DEFLATED if path.endswith(_DEFLATED_SUFFIXES) else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _write(archive: zipfile.ZipFile, entry: ArchiveFile) -> bool:
    """Add one entry; False when its stored file no longer exists."""
    info = _info(entry.path, entry.modified)
    if entry.data is not None:
        archive.writestr(info, entry.data)
        return True
    try:
        source = default_storage.open(entry.storage_name, "rb")
    except FileNotFoundError:
        return False
    with source:
        info.file_size = source.size  # lets zipfile pick ZIP64 up front for files over 2 GiB
        with archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    return True


def _remove_partial(job: DataExport) -> None:
    """After a failure or cancel: no half archive, and no empty folder left for a deleted account."""
    partial = Path(default_storage.path(job.partial_name()))
    partial.unlink(missing_ok=True)
    try:
        partial.parent.rmdir()  # only when empty
    except OSError:
        pass
