"""Media files no row refers to: found by one walk of the folders the apps own, removed after a grace.

Our writes put files first and rows after (a row never names a missing file), and remove the files
again when the insert fails. A process killed in between (the OOM killer, SIGKILL, power loss) runs no
`except`: the files stay with no row, for ever. So do the files of a row deleted by a process killed
after its commit but before the `on_commit` that removes them. This sweep takes them away.

The bottom layer knows no app's models: each app registers, from its AppConfig.ready, the top-level
media folders it owns (`roots`) and what its rows refer to there: stored file names (`files`) and
folders whose whole tree belongs to a row (`folders`, e.g. a training run's output folder), but for
names under them that start with one of the rule's `scratch` prefixes (an atomic write's temporary
file or staging folder: an old one was abandoned by a killed process). A file under a registered
root is an orphan when no registered rule refers to it (names are pooled across apps and users, so a
row of any app or user keeps its file) and it was last modified before the grace period
(IMAGESITE_ORPHAN_GRACE_S, an hour by default): a write still in progress, whose row is not committed
yet, is never touched.

Scales to the 100,000s: every root is walked once (os.scandir, no per-file query), the referenced
names are read once afterwards (values_list, streamed) into sets, and each file is checked against
the sets and its own parent folders. The walk never follows a symbolic link (links are left alone, a
root that is one is skipped), and a file is unlinked only if it still resolves inside MEDIA_ROOT. Runs hourly (a django-q2 schedule made after
migrate, imagesite.apps) and as `manage.py sweep_orphans [--dry-run]`.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.utils import timezone

log = logging.getLogger("imagesite.orphans")

SWEEP_TASK = "imagesite.orphans.run_sweep"

Names = Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Rule:
    """An app's media: the top-level folders it owns and what its rows refer to under them."""

    roots: tuple[str, ...]
    files: Names | None = None  # storage names ("images/3/ab….png") rows refer to
    folders: Names | None = None  # storage folders whose every file a row refers to...
    scratch: tuple[str, ...] = ()  # ...but for names under them with a segment starting so (".")


_RULES: dict[str, Rule] = {}


def register(name: str, *, roots: Iterable[str], files: Names | None = None, folders: Names | None = None,
             scratch: Iterable[str] = ()) -> None:
    """Add (or replace, by `name`) an app's rule. Called once per app and process, from its `ready()`.
    A root is one or more path segments under MEDIA_ROOT ("images"), never MEDIA_ROOT itself."""
    cleaned, scratch = tuple(_clean_root(root) for root in roots), tuple(scratch)
    if any(not prefix for prefix in scratch):
        raise ValueError("a scratch prefix cannot be empty (it would leave a referenced folder unkept)")
    _RULES[name] = Rule(roots=cleaned, files=files, folders=folders, scratch=scratch)


def registered_rules() -> dict[str, Rule]:
    return dict(_RULES)


def _clean_root(root: str) -> str:
    path = PurePosixPath(root)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"an orphan-sweep root must be a folder under MEDIA_ROOT, not {root!r}")
    return path.as_posix()


def stored_names(queryset: QuerySet, *fields: str) -> Iterator[str]:
    """The non-empty values of `fields` (FileFields or storage-name CharFields) over `queryset`,
    streamed in chunks: what a rule's `files` returns."""
    for row in queryset.order_by().values_list(*fields).iterator(chunk_size=5000):
        yield from (value for value in row if value)


# --- the sweep --------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What a sweep found: `removed` (storage names; in a dry run, what it would remove) and bytes,
    counts of files kept because referenced or young, and of links and roots left alone."""

    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    referenced: int = 0
    young: int = 0
    links_skipped: int = 0
    roots_skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {"removed": len(self.removed), "removed_bytes": self.removed_bytes, "referenced": self.referenced,
                "young": self.young, "links_skipped": self.links_skipped, "roots_skipped": len(self.roots_skipped)}


@dataclass(frozen=True)
class _Found:
    name: str  # storage name, "/"-separated
    path: str
    size: int
    mtime: float


def grace_period() -> timedelta:
    return timedelta(seconds=settings.IMAGESITE_ORPHAN_GRACE_S)


def sweep(*, dry_run: bool = False, grace: timedelta | None = None) -> SweepReport:
    """Remove (unless `dry_run`) every file under the registered roots that no rule refers to and that
    was last modified more than `grace` ago (default: grace_period())."""
    started = time.monotonic()
    report = SweepReport()
    try:
        media = Path(default_storage.path("")).resolve()
    except NotImplementedError:  # storage that is not a local (or shared, mounted) folder
        log.warning("orphan sweep skipped: the default storage has no local folders to walk")
        return report
    cutoff = time.time() - (grace if grace is not None else grace_period()).total_seconds()
    roots = _outermost({root for rule in _RULES.values() for root in rule.roots})
    old: list[_Found] = []
    for root in roots:  # the walk first: a row committed before the queries below counts
        for found in _walk_root(media, root, report):
            if found.mtime > cutoff:
                report.young += 1
            else:
                old.append(found)
    files, folders = _referenced() if old else (set(), {})  # nothing old: no query to make
    for found in old:
        if found.name in files or _kept_by_folder(found.name, folders):
            report.referenced += 1
        elif dry_run or _remove(found, cutoff, media):
            report.removed.append(found.name)
            report.removed_bytes += found.size
    report.seconds = time.monotonic() - started
    _log(report, dry_run)
    return report


def _referenced() -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """The file names rows refer to, and the folders they keep whole (each with its scratch prefixes)."""
    files: set[str] = set()
    folders: dict[str, tuple[str, ...]] = {}
    for rule in _RULES.values():
        if rule.files is not None:
            files.update(rule.files())
        if rule.folders is not None:
            for folder in rule.folders():
                folder = folder.strip("/")
                if folder:  # two rules keeping one folder: what either keeps stays
                    folders[folder] = tuple(set(folders[folder]) & set(rule.scratch)) if folder in folders else rule.scratch
    return files, folders


def _kept_by_folder(name: str, folders: dict[str, tuple[str, ...]]) -> bool:
    """Whether a kept folder above `name` holds it as content (not as a scratch name)."""
    if not folders:
        return False
    for parent in _parents(name):
        scratch = folders.get(parent)
        if scratch is not None and not any(segment.startswith(scratch) for segment in name[len(parent) + 1:].split("/")):
            return True
    return False


def _outermost(roots: set[str]) -> list[str]:
    """The roots to walk: each once, none inside another."""
    return sorted(root for root in roots if roots.isdisjoint(_parents(root)))


def _parents(name: str) -> Iterator[str]:
    """The folders above a storage name, nearest first: "a/b/c" → "a/b", "a"."""
    parent = name.rpartition("/")[0]
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


def _walk_root(media: Path, root: str, report: SweepReport) -> Iterator[_Found]:
    """Regular files under media/root, without following links, the root's own included."""
    top = media
    for part in PurePosixPath(root).parts:
        top = top / part
        if top.is_symlink():  # e.g. images/ on another disk: not ours to walk
            log.warning("orphan sweep: %s is a symbolic link; the files under %s are left alone", top, root)
            report.roots_skipped.append(root)
            return
    if not top.is_dir():
        return
    stack = [(str(top), root)]
    while stack:
        path, name = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except OSError as exc:  # removed meanwhile, or unreadable: the next sweep tries again
            log.warning("orphan sweep could not read %s: %s", name, exc.strerror)
            continue
        for entry in entries:
            child = f"{name}/{entry.name}"
            try:
                if entry.is_symlink():
                    report.links_skipped += 1
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, child))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield _Found(child, entry.path, st.st_size, st.st_mtime)
            except FileNotFoundError:
                continue  # removed by its owner while we looked


def _remove(found: _Found, cutoff: float, media: Path) -> bool:
    """Unlink the file unless it changed since the walk (rewritten: young again; a link now, or a
    folder on its way swapped for one that leads out of the media root)."""
    try:
        st = os.lstat(found.path)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff or not Path(os.path.realpath(found.path)).is_relative_to(media):
            return False
        os.unlink(found.path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("orphan sweep could not remove %s: %s", found.name, exc.strerror)
        return False
    return True


def _log(report: SweepReport, dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    message = "orphan sweep %s %s file(s), %s bytes (kept %s referenced, %s younger than the grace) in %.2f s"
    args = (verb, len(report.removed), report.removed_bytes, report.referenced, report.young, report.seconds)
    # Orphans mean a process died between its file writes and its commit: worth a warning.
    (log.warning if report.removed and not dry_run else log.info)(message, *args)


# --- the schedule -----------------------------------------------------------------------------------
def run_sweep() -> dict[str, int]:
    """The hourly django-q2 task: sweep and return the counts (kept as the task's result)."""
    return sweep().counts()


def ensure_sweep_schedule(using: str = "default", **kwargs) -> None:
    """post_migrate receiver (imagesite.apps): run_sweep every hour, first an hour after it is made
    (files written by a fresh install are all younger than the grace anyway). Made once: an admin's
    later change to it is kept."""
    from django_q.models import Schedule

    Schedule.objects.using(using).get_or_create(
        func=SWEEP_TASK,
        defaults={"name": "sweep orphan media files", "schedule_type": Schedule.HOURLY, "repeats": -1,
                  "next_run": timezone.now() + timedelta(hours=1)},
    )
