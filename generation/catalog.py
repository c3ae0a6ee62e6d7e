"""The base models on offer: IMAGESITE_MODEL (the default) plus every checkpoint in the models folder
(IMAGESITE_MODELS_DIR) and any path staff list in the admin, one `BaseModel` row each.

Torch-free: a scan reads config files and safetensors headers (generation.modelinfo), never weights,
so it may run in a web request. It runs on `migrate`, on `manage.py scan_models`, from the admin, and
cheaply whenever a form or the API needs the list and the folder looks different from last time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from .modelinfo import SINGLE_FILE_SUFFIXES, ModelInfo, describe_model
from .models import BaseModel, ModelOrigin

log = logging.getLogger("generation.catalog")

GONE = "Not found any more (moved or deleted?)."


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)  # "name: why"

    def __str__(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.updated)} updated", f"{len(self.removed)} removed"]
        return ", ".join(parts) + "".join(f"\n  not usable: {line}" for line in self.unusable)


# --- reading the files ----------------------------------------------------------------------------
def candidates(folder: str | Path | None = None) -> list[Path]:
    """Checkpoints directly in the models folder: each diffusers folder (with model_index.json) and
    each .safetensors/.ckpt file, by name. A missing folder has none."""
    folder = Path(folder if folder is not None else settings.IMAGESITE_MODELS_DIR)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "model_index.json").is_file():
            found.append(entry)
        elif entry.is_file() and entry.suffix.lower() in SINGLE_FILE_SUFFIXES:
            found.append(entry)
    return found


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (0 for a hub id or a missing path)."""
    path = Path(path)
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Description:
    name: str
    family: str
    family_label: str
    size_bytes: int
    problem: str


def describe(path: str) -> Description:
    """What the files say: name, family, size on disk, and why they cannot be used ("" if they can)."""
    size = size_on_disk(path)
    local = Path(path).exists()
    name = Path(path).name if local else path
    if not local and (Path(path).is_absolute() or Path(path).suffix.lower() in SINGLE_FILE_SUFFIXES):
        return Description(name, "", "", 0, GONE)
    info = describe_model(path)
    if info.problem:
        return Description(info.name, "", "", size, info.problem)
    return Description(info.name, info.family, info.family_label, size, "")


def folder_signature() -> tuple:
    """Changes whenever a checkpoint is added to, removed from or still being copied into the
    models folder, or a setting names other models: a stat per entry, no file read."""
    folder = Path(settings.IMAGESITE_MODELS_DIR)
    stats = []
    try:
        stats.append(folder.stat().st_mtime_ns)
        for entry in folder.iterdir():
            stat = entry.stat()
            stats.append((entry.name, stat.st_mtime_ns, stat.st_size))
    except OSError:
        pass
    return (settings.IMAGESITE_MODEL, str(folder), tuple(sorted(stats, key=str)))


def size_limits() -> tuple[int, int]:
    """(smallest min_size, largest max_size) over the models the folder and the setting offer, read
    from the files (no database: the API schema is made without one)."""
    infos = [describe_model(source) for source in (settings.IMAGESITE_MODEL, *map(str, candidates()))]
    infos = [info for info in infos if not info.problem] or infos[:1]
    return min(i.min_size for i in infos), max(i.max_size for i in infos)


# --- the rows -----------------------------------------------------------------------------------------
def scan_models() -> ScanReport:
    """Bring the rows in line with IMAGESITE_MODEL, the models folder and the files behind admin
    rows: add what is new, refresh family, size and problem, and leave exactly one default. A folder
    row no longer in the folder is deleted, or kept disabled (as an admin row) when jobs name it, as
    a former IMAGESITE_MODEL is. Safe to run from several processes at once."""
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _scan()
        except IntegrityError:  # another process added the same row meanwhile: read it again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _scan() -> ScanReport:
    describe_model.cache_clear()  # files may have changed under a path read before
    report = ScanReport()
    now = timezone.now()
    setting_path = settings.IMAGESITE_MODEL
    wanted = {setting_path: ModelOrigin.SETTING}
    for path in candidates():
        wanted.setdefault(str(path), ModelOrigin.FOLDER)
    rows = {row.path: row for row in BaseModel.objects.all()}
    names = {row.name for row in rows.values()}
    for row in rows.values():
        if row.path in wanted:
            continue
        if row.origin == ModelOrigin.FOLDER and not (row.generations.exists() or row.training_runs.exists()):
            row.delete()  # gone from the folder, and no job names it
            names.discard(row.name)
            report.removed.append(row.name)
            continue
        if row.origin != ModelOrigin.ADMIN:  # gone from the folder or from IMAGESITE_MODEL: kept as a record
            row.origin, row.enabled, row.is_default = ModelOrigin.ADMIN, False, False
            report.removed.append(row.name)
        _refresh(row, now, report)
    for path, origin in wanted.items():
        row = rows.get(path)
        if row is None:
            found = describe(path)
            row = BaseModel(path=path, origin=origin, name=unique_name(found.name, names), scanned_at=now)
            _apply(row, found)
            row.save()
            names.add(row.name)
            report.added.append(row.name)
            if row.problem:
                report.unusable.append(f"{row.name}: {row.problem}")
        else:
            if ModelOrigin.SETTING in (origin, row.origin) and row.origin != origin:
                row.origin = origin  # becomes, or stops being, IMAGESITE_MODEL's row
                row.is_default = row.is_default and origin == ModelOrigin.SETTING
            _refresh(row, now, report)
    _one_default(setting_path)
    return report


def _apply(row: BaseModel, found: Description) -> None:
    row.family, row.family_label, row.size_bytes, row.problem = found.family, found.family_label, found.size_bytes, found.problem


def _refresh(row: BaseModel, now, report: ScanReport) -> None:
    found = describe(row.path)
    before = (row.family, row.family_label, row.size_bytes, row.problem)
    _apply(row, found)
    row.scanned_at = now
    if before != (row.family, row.family_label, row.size_bytes, row.problem):
        report.updated.append(row.name)
    if row.problem:
        report.unusable.append(f"{row.name}: {row.problem}")
    row.save()


def unique_name(wanted: str, taken: set[str]) -> str:
    wanted = wanted[:190] or "model"
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted} ({n})", n + 1
    return name


def _one_default(setting_path: str) -> None:
    """Keep a default an operator chose while it is offered; else IMAGESITE_MODEL's row, else the
    first model offered."""
    current = BaseModel.objects.filter(is_default=True).first()
    if current is not None and current.is_offered:
        return
    choice = BaseModel.objects.offered().filter(path=setting_path).first() or BaseModel.objects.offered().order_by("name").first()
    BaseModel.objects.filter(is_default=True).update(is_default=False)
    if choice is not None:
        BaseModel.objects.filter(pk=choice.pk).update(is_default=True)


_last_scan: tuple | None = None  # (folder signature, folder rows it left)


def refresh_if_changed() -> None:
    """Scan when the models folder or IMAGESITE_MODEL look different from this process's last scan,
    or the rows it left are not all there (another process, a rollback): a stat per folder entry
    and one query otherwise."""
    global _last_scan
    signature = folder_signature()
    if _last_scan is not None and _last_scan[0] == signature:
        rows = BaseModel.objects.aggregate(
            setting=Count("pk", filter=Q(origin=ModelOrigin.SETTING, path=settings.IMAGESITE_MODEL)),
            folder=Count("pk", filter=Q(origin=ModelOrigin.FOLDER)),
        )
        if rows["setting"] == 1 and rows["folder"] == _last_scan[1]:
            return
    scan_models()
    _last_scan = (signature, BaseModel.objects.filter(origin=ModelOrigin.FOLDER).count())


def offered_models():
    refresh_if_changed()
    return BaseModel.objects.offered()


def default_model() -> BaseModel:
    """The operator's default (preselected in forms, used when a job names none)."""
    return offered_with_default()[1]


def offered_with_default() -> tuple[list[BaseModel], BaseModel]:
    """The offered models and the default among them: the one marked default, else the first
    offered; with every model disabled, IMAGESITE_MODEL's row (it still renders, as before there
    were rows). One freshness check and one query, for forms that show both."""
    models = list(offered_models())
    default = next((m for m in models if m.is_default), None) or (models[0] if models else None)
    if default is None:
        default = BaseModel.objects.get(origin=ModelOrigin.SETTING, path=settings.IMAGESITE_MODEL)
    return models, default


def find_offered(value: int | str) -> BaseModel | None:
    """An offered model by id (a number) or by name."""
    models = offered_models()
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return models.filter(pk=int(value)).first()
    return models.filter(name=value).first()


def info_of(row: BaseModel | None) -> ModelInfo:
    return describe_model(row.path) if row is not None else describe_model(settings.IMAGESITE_MODEL)


def scan_after_migrate(using: str = "default", **kwargs) -> None:
    """post_migrate receiver (generation.apps): the rows exist as soon as the database does."""
    if using != "default":
        return
    try:
        report = scan_models()
    except DatabaseError:  # a partial migration plan: the table is not there yet
        return
    if report.added or report.removed:
        log.info("base models: %s", report)
