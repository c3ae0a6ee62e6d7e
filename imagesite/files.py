"""Private files: served only after the caller checked ownership, and deleted with their rows after
the transaction commits (a rollback keeps both)."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponse


def delete_file_on_commit(field_file) -> None:
    if not field_file:
        return
    storage, name = field_file.storage, field_file.name
    transaction.on_commit(lambda: storage.delete(name))


def delete_tree_on_commit(prefix: str) -> None:
    """Remove a folder of derived files (class images, run outputs) under the private media root."""
    if not prefix:
        return
    path = Path(default_storage.path(prefix))
    transaction.on_commit(lambda: shutil.rmtree(path, ignore_errors=True))


def private_file_response(file, *, download_name: str | None = None, content_type: str = "image/png") -> HttpResponse:
    """Serve a private file (a FieldFile, or a storage name) after the caller checked ownership:
    through nginx (X-Accel-Redirect) when configured, else streamed by Django."""
    name = file if isinstance(file, str) else file.name
    disposition = f'attachment; filename="{download_name}"' if download_name else "inline"
    if settings.IMAGESITE_X_ACCEL_REDIRECT:
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = settings.IMAGESITE_X_ACCEL_REDIRECT + name
    else:
        response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    response["Content-Disposition"] = disposition
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def private_download(found: tuple[str, str] | None, missing: str | None = None) -> HttpResponse:
    """A run's file as an attachment, from a model's (storage name, download name) answer; 404
    (with `missing` as the reason, when given) when there is no such file."""
    if found is None:
        raise Http404(missing) if missing else Http404()
    name, download_name = found
    return private_file_response(name, download_name=download_name, content_type="application/octet-stream")
