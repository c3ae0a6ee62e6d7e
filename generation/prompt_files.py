"""LoRAs and textual-inversion embeddings users bring for their prompts: upload, delete, and the
names a prompt uses resolved when a job is created (pages and the API both come here).

`<lora:NAME:w>` finds, in order: the user's own uploaded LoRA called NAME, a LoRA staff shared
with everyone, the user's subject whose token is NAME (its trained LoRA). A word of the prompt equal
to an embedding's name (the user's own first, then a shared one; any case, as A1111's tokenizer
sees it) uses that embedding. What was resolved is stored on the job (Generation.loras/embeddings),
so the worker applies exactly what was checked (`worker_adapters`). Torch-free: the web imports it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from functools import cache
from pathlib import PurePath
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Lower

from .models import BaseModel, Embedding, Lora, PromptFile, subjects_of
from .prompt_file_checks import (
    FAMILY_LABELS, NAME_RE, PromptFileError, clean_name, fits, inspect_embedding, inspect_lora, read_header,
)
from .prompt_syntax import extract_lora_tags

MAX_LORA_BYTES = 1024 * 1024 * 1024  # SDXL LoRAs of high rank reach several hundred MB
MAX_EMBEDDING_BYTES = 4 * 1024 * 1024  # embeddings are KBs
MAX_LORAS_PER_JOB = 8
_RUN_SUFFIX = re.compile(r"-(?:lora)-run(\d+)$")  # a subject's LoRA download: <token>-<class>-lora-run<N>


def max_bytes(kind: type[PromptFile]) -> int:
    if kind is Lora:
        return int(getattr(settings, "IMAGESITE_MAX_LORA_BYTES", MAX_LORA_BYTES))
    return int(getattr(settings, "IMAGESITE_MAX_EMBEDDING_BYTES", MAX_EMBEDDING_BYTES))


# --- what a user may use ------------------------------------------------------------------------
def usable(kind: type[PromptFile], owner) -> QuerySet:
    """The owner's own files of `kind` and those shared with everyone, own ones first."""
    return kind.objects.filter(Q(owner=owner) | Q(shared=True)).select_related("owner").order_by("name", "-shared", "pk")


def owned(kind: type[PromptFile], owner) -> QuerySet:
    return kind.objects.filter(owner=owner)


def lora_subjects(owner) -> list:
    """The owner's subjects whose trained checkpoint is a LoRA (usable as <lora:token:w>)."""
    return [s for s in subjects_of(owner).ready().with_trained_run().order_by("token") if _subject_run(s) is not None]


def _subject_run(subject):
    run = subject.trained_run()
    return run if run is not None and run.method == "lora" and run.checkpoint else None


# --- upload and delete --------------------------------------------------------------------------
def upload_lora(*, owner, file, name: str = "") -> Lora:
    """Check an uploaded LoRA (.safetensors, size, header, key layout, family) and store it; a
    ValidationError keyed "file" or "name" otherwise, with nothing stored."""
    return _upload(Lora, owner=owner, file=file, name=name)


def upload_embedding(*, owner, file, name: str = "") -> Embedding:
    """Check an uploaded textual-inversion embedding and store it (as upload_lora)."""
    return _upload(Embedding, owner=owner, file=file, name=name)


def _upload(kind: type[PromptFile], *, owner, file, name: str):
    what = "LoRA" if kind is Lora else "embedding"
    if PurePath(file.name or "").suffix.lower() != ".safetensors":
        raise ValidationError({"file": [f"Upload the {what} as a .safetensors file (.pt and .ckpt files can run code when loaded)."]})
    limit = max_bytes(kind)
    if file.size > limit:
        raise ValidationError({"file": [f"The file is {file.size / 2**20:,.1f} MiB; a {what} may be at most {limit / 2**20:,.0f} MiB."]})
    try:
        header = read_header(file, file.size)
        facts = inspect_lora(header) if kind is Lora else inspect_embedding(header)
    except PromptFileError as exc:
        raise ValidationError({"file": [str(exc)]}) from None
    name = (name or "").strip() or clean_name(PurePath(file.name).stem)
    if not NAME_RE.match(name):
        raise ValidationError({"name": ["Use letters, digits, “_”, “-” or “.” (no spaces), up to 100 characters, as the name is written in prompts."]})
    if owned(kind, owner).filter(name=name).exists():
        raise ValidationError({"name": [f"You already have a {what} called “{name}”: delete it first or choose another name."]})
    row = kind(owner=owner, name=name, sha256=_sha256(file), size_bytes=file.size, family=facts.family)
    if kind is Lora:
        row.layout = facts.layout
    else:
        row.vectors = facts.vectors
    file.seek(0)
    row.file.save("upload.safetensors", file, save=False)
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:  # the same name uploaded twice at once
        row.file.storage.delete(row.file.name)
        raise ValidationError({"name": [f"You already have a {what} called “{name}”."]}) from None
    return row


def _sha256(file) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    for chunk in file.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def delete_prompt_file(row: PromptFile) -> None:
    """Delete the row; its file goes once the deletion is committed (generation.signals, which also
    covers a deleted account's files)."""
    row.delete()


def toggle_shared(row: PromptFile, shared: bool) -> None:
    row.shared = shared
    row.save(update_fields=["shared"])


# --- resolving a prompt's names at job creation ---------------------------------------------------
def resolve_prompt_files(owner, prompt: str, negative_prompt: str, base_model: BaseModel | None) -> tuple[list[dict], list[dict]]:
    """(loras, embeddings) for Generation.loras / Generation.embeddings: every `<lora:…>` tag of both
    prompts (the same name twice adds its weights, as A1111 applies both) and every embedding named
    by a word of them. ValidationError keyed "prompt"/"negative_prompt" for an unknown name, a file
    of another family than the base's, or a subject without a trained LoRA."""
    family = base_model.family if base_model is not None else ""
    errors: dict[str, list[str]] = {}
    loras: dict[str, dict] = {}
    embeddings: dict[int, dict] = {}
    parsed = [(field, *extract_lora_tags(text)) for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt or ""))]
    names = {tag.name for _, _, tags in parsed for tag in tags}
    named, subjects = _loras_named(owner, names), _subjects_named(owner, names)  # a few queries for every tag
    known = cache(lambda: _known_lora_names(owner))  # for unknown names' hint: read once, if at all
    for field, remaining, tags in parsed:
        problems: list[str] = []
        for tag in tags:
            try:
                entry = _resolve_lora(tag.name, family, _pick_lora(named, owner, tag.name), subjects.get(tag.name), known)
            except ValidationError as exc:
                problems.extend(exc.messages)
                continue
            key = f"{entry['kind']}-{entry['id']}"
            if key in loras:
                loras[key]["weight"] += tag.weight
                loras[key]["unet_weight"] += tag.unet_weight
            else:
                loras[key] = entry | {"weight": tag.weight, "unet_weight": tag.unet_weight}
        for row in _named_embeddings(owner, remaining):
            if not fits(row.family, family):
                problems.append(f"The embedding “{row.name}” is for {FAMILY_LABELS.get(row.family, row.family)}; "
                                f"this base model is {_family_label(base_model)}.")
            else:
                embeddings[row.pk] = {"name": row.name, "id": row.pk, "sha256": row.sha256, "vectors": row.vectors, "family": row.family}
        if problems:
            errors[field] = problems
    if len(loras) > MAX_LORAS_PER_JOB and "prompt" not in errors:
        errors["prompt"] = [f"Use at most {MAX_LORAS_PER_JOB} LoRAs at once."]
    if errors:
        raise ValidationError(errors)
    return list(loras.values()), list(embeddings.values())


def _loras_named(owner, names: set[str]) -> list[Lora]:
    """The LoRAs the owner may use whose name is one of `names` in any case (names are ASCII)."""
    if not names:
        return []
    return list(Lora.objects.filter(Q(owner=owner) | Q(shared=True)).annotate(lowered=Lower("name"))
                .filter(lowered__in={name.lower() for name in names}))


def _pick_lora(rows: list[Lora], owner, name: str) -> Lora | None:
    """The LoRA `name` means: as written before any case, the owner's own before the oldest shared one."""
    for matches in (lambda row: row.name == name, lambda row: row.name.lower() == name.lower()):
        own = sorted((row for row in rows if matches(row) and row.owner_id == owner.pk), key=lambda row: row.name)
        shared = sorted((row for row in rows if matches(row) and row.shared), key=lambda row: row.pk)
        if own or shared:
            return (own or shared)[0]
    return None


def _resolve_lora(name: str, family: str, row: Lora | None, subject, known: Callable[[], list[str]]) -> dict:
    """The job's entry for the tag `name`: the LoRA `row` it names, else the `subject` it names (its
    trained run prefetched), else a ValidationError that offers the `known()` names."""
    if row is not None:
        if not fits(row.family, family):
            raise ValidationError(f"The LoRA “{row.name}” is for {FAMILY_LABELS.get(row.family, row.family)}; this base model "
                                  f"is {family_label_of(family)}. Pick a base model of its family, or leave the tag out.")
        return {"name": name, "kind": "lora", "id": row.pk, "sha256": row.sha256, "family": row.family}
    if subject is not None:
        run = _subject_run(subject)
        if run is None:
            trained = subject.trained_run()
            why = "was fine-tuned in full (choose it in the Subject field instead)" if trained else "has no trained LoRA yet"
            raise ValidationError(f"Your subject “{subject.name}” ({subject.token}) {why}.")
        if not fits(run.base_family, family):
            raise ValidationError(f"Your subject “{subject.name}” was trained on {family_label_of(run.base_family)}; this base "
                                  f"model is {family_label_of(family)}.")
        return {"name": name, "kind": "subject", "id": subject.pk, "run": run.pk, "sha256": "", "family": run.base_family}
    hint = f"use one of: {', '.join(known()[:12])}{' …' if len(known()) > 12 else ''}" if known() else "you have none yet"
    raise ValidationError(f"No LoRA called “{name}”: upload it on the LoRAs page, or {hint}.")


def _known_lora_names(owner) -> list[str]:
    return sorted({*usable(Lora, owner).values_list("name", flat=True), *(s.token for s in lora_subjects(owner))}, key=str.lower)


def _subjects_named(owner, names: set[str]) -> dict:
    """name -> the owner's subject the tag `name` names: the one whose token it is (any case; the
    newest of a tie), else the one whose LoRA download's stem it is (<token>-<class>-lora-run<N>).
    Trained runs come prefetched: at most three queries, however many tags."""
    if not names:
        return {}
    subjects = subjects_of(owner)
    run_ids = {name: int(match.group(1)) for name in names if (match := _RUN_SUFFIX.search(name))}
    run_subject = dict(subjects.filter(runs__pk__in=run_ids.values()).values_list("runs__pk", "pk")) if run_ids else {}
    wanted = Q(lowered__in={name.lower() for name in names}) | Q(pk__in=run_subject.values())
    rows = list(subjects.annotate(lowered=Lower("token")).filter(wanted).with_trained_run())  # Meta ordering: newest first
    found = {}
    for name in names:
        by_token = next((s for s in rows if s.token.lower() == name.lower()), None)
        by_run = next((s for s in rows if s.pk == run_subject.get(run_ids.get(name))), None)
        if by_token or by_run:
            found[name] = by_token or by_run
    return found


def _named_embeddings(owner, text: str) -> list[Embedding]:
    """The embeddings whose name is a word of `text` (own ones before shared ones of the same name)."""
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9_.\-]+", text)}
    words |= {w.rstrip(".") for w in words}
    if not words:
        return []
    found: dict[str, Embedding] = {}
    for row in usable(Embedding, owner).annotate(lowered=Lower("name")).filter(lowered__in=words).order_by("-owner_id", "pk"):
        key = row.name.lower()
        if key not in found or row.owner_id == owner.pk:
            found[key] = row
    return list(found.values())


def family_label_of(family: str) -> str:
    return FAMILY_LABELS.get("sd2" if family == "sd2v" else family, family or "an unknown family")


def _family_label(base_model: BaseModel | None) -> str:
    if base_model is None:
        return "of an unknown family"
    return base_model.family_label or family_label_of(base_model.family)


# --- the worker's side: what a job applies ---------------------------------------------------------
def worker_adapters(job, subject_adapter=None) -> list:
    """The adapters (generation.adapters.Adapter) a job applies: its Subject field's (weight 1,
    unless a tag names the same subject), its `<lora:…>` tags' and its embeddings'. A file deleted
    since the job was queued is a GenerationError (a readable failure, not a silent base image)."""
    from django.core.files.storage import default_storage

    from .adapters import Adapter
    from .errors import GenerationError

    adapters: list = []
    subject_run = None
    if subject_adapter is not None:
        adapters.append(replace(subject_adapter, name=job.subject.token if job.subject_id else job.subject_name))
        subject_run = subject_adapter.key
    for entry in job.loras or []:
        weights = {"weight": float(entry.get("weight", 1.0)), "unet_weight": float(entry.get("unet_weight", entry.get("weight", 1.0)))}
        if entry["kind"] == "subject":
            run = _job_subject_run(job, entry)
            if run is None:
                raise GenerationError(f"The subject LoRA “{entry['name']}” was deleted or retrained away; queue the job again.")
            key = f"run-{run.pk}"
            if key == subject_run:  # the tag sets the chosen subject's weight
                adapters[0] = replace(adapters[0], **weights)
                continue
            token_file = run.token_embedding_name()
            adapters.append(Adapter(kind="lora", path=default_storage.path(run.checkpoint), key=key, name=entry["name"],
                                    token_embedding=default_storage.path(token_file) if token_file else None, **weights))
            continue
        row = Lora.objects.filter(pk=entry["id"]).first()
        if row is None or not row.file:
            raise GenerationError(f"The LoRA “{entry['name']}” was deleted after the job was queued.")
        adapters.append(Adapter(kind="lora", path=default_storage.path(row.file.name), key=f"lora-{row.pk}-{row.sha256[:12]}",
                                name=entry["name"], sha256=row.sha256, **weights))
    for entry in job.embeddings or []:
        row = Embedding.objects.filter(pk=entry["id"]).first()
        if row is None or not row.file:
            raise GenerationError(f"The embedding “{entry['name']}” was deleted after the job was queued.")
        adapters.append(Adapter(kind="embedding", path=default_storage.path(row.file.name), key=f"emb-{row.pk}",
                                name=row.name, sha256=row.sha256))
    return adapters


def _job_subject_run(job, entry: dict):
    subject = subjects_of(job.owner).filter(pk=entry["id"]).first()
    run = _subject_run(subject) if subject is not None else None
    return run


def lora_hashes(adapters: list) -> dict[str, str]:
    """{name as the prompt writes it: first 10 hex of the file's sha256} for the PNG's `Lora hashes`
    (civitai's AutoV2); a subject's file is hashed here, in the worker."""
    from .png_params import lora_short_hash

    return {a.name: (a.sha256[:10] if a.sha256 else lora_short_hash(a.path)) for a in adapters if a.kind == "lora" and a.name}


def ti_hashes(adapters: list) -> dict[str, str]:
    """{embedding name: first 10 hex of its sha256} for the PNG's `TI hashes` (as A1111 writes them)."""
    return {a.name: a.sha256[:10] for a in adapters if a.kind == "embedding"}
