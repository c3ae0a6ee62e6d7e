"""Private files: deleted with their rows, after the transaction commits (a rollback keeps both)."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.core.files.storage import default_storage
from django.db import transaction


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

