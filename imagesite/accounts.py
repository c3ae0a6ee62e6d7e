"""A user's own account: deleting it with everything it holds. Pages and the admin both come here."""
from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)


def delete_account(*, user) -> None:
    """Delete `user` and every row and file of theirs.

    Rows go by cascade from the user (generations and images, subjects, photos, training runs,
    data exports, API tokens, webhooks, limits); each model's post_delete signal deletes its files
    once the transaction commits, and a worker rendering, training or exporting for them finds its
    row gone and stops at its next step (an export removes its half-written archive). Login-throttle records that name the user go too. After the files, the user's
    own folders under the media root (`<kind>/<user id>/`) are removed when nothing is left in them:
    a file still there is logged, not deleted blindly."""
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    user_id, username = user.pk, user.get_username()
    with transaction.atomic():
        user.delete()
        for model in (AccessAttempt, AccessFailureLog, AccessLog):
            model.objects.filter(username=username).delete()
        _delete_sessions(user_id)
        # Registered after the rows' own file deletions, so it runs after them.
        transaction.on_commit(lambda: remove_empty_user_folders(user_id))


def _delete_sessions(user_id: int) -> None:
    """Signed-in sessions of the user on other browsers (database sessions: each one decoded, which
    is fine for a self-hosted site's few thousand rows)."""
    if settings.SESSION_ENGINE != "django.contrib.sessions.backends.db":
        return
    from django.contrib.auth import SESSION_KEY
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    mine = [s.pk for s in Session.objects.filter(expire_date__gt=timezone.now()).iterator() if s.get_decoded().get(SESSION_KEY) == str(user_id)]
    Session.objects.filter(pk__in=mine).delete()


def remove_empty_user_folders(user_id: int) -> list[Path]:
    """Remove `<media root>/<kind>/<user_id>/` for every kind of file when it holds no file (empty
    sub-folders are removed with it); return the folders that still hold files."""
    root = Path(settings.MEDIA_ROOT)
    left: list[Path] = []
    if not root.is_dir():
        return left
    for kind in root.iterdir():
        folder = kind / str(user_id)
        if not folder.is_dir() or folder.is_symlink():
            continue
        if any(path.is_file() for path in folder.rglob("*")):
            log.warning("deleted user %s: files remain in %s", user_id, folder)
            left.append(folder)
            continue
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        folder.rmdir()
    return left
