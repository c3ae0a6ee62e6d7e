"""The orphan sweep (imagesite.orphans): media files no row refers to go once older than the grace;
referenced files, young files, links and folders no app registered stay. No torch, no worker."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from generation.models import GeneratedImage, Generation, Lora
from imagesite import orphans
from imagesite.jobs import JobStatus
from imagesite.models import DataExport
from training.models import PhotoStatus, Subject, SubjectPhoto, TrainingRun

from .factories import make_generation, make_image, png_bytes

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
HOURS_AGO = 2 * 3600


@pytest.fixture
def media(settings, tmp_path) -> Path:
    """A media root of this test's own (the session's is shared with other tests' files)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


def write(media: Path, name: str, *, age_s: float = HOURS_AGO, data: bytes = b"x") -> Path:
    path = media / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    age(path, age_s)
    return path


def age(path: Path, age_s: float = HOURS_AGO) -> None:
    when = time.time() - age_s
    os.utime(path, (when, when), follow_symlinks=False)


def age_all(media: Path) -> None:
    for path in media.rglob("*"):
        if path.is_file() and not path.is_symlink():
            age(path)


def test_an_old_orphan_goes_a_referenced_file_and_a_young_orphan_stay(media, owner):
    image = make_image(owner)
    age_all(media)
    orphan = write(media, f"images/{owner.pk}/dead.png")
    young = write(media, f"images/{owner.pk}/being-written.png", age_s=60)

    report = orphans.sweep()

    assert report.removed == [f"images/{owner.pk}/dead.png"]
    assert not orphan.exists() and young.exists()
    assert (media / image.file.name).exists() and (media / image.thumbnail.name).exists()
    assert (report.referenced, report.young, report.removed_bytes) == (2, 1, 1)


def test_a_file_of_another_users_row_is_kept(media, owner, other_user):
    """References are pooled across users: the folder a file sits in never decides whose it is."""
    theirs = make_image(other_user)
    generation = make_generation(other_user, status=JobStatus.SUCCEEDED)
    odd_place = write(media, f"images/{owner.pk}/kept-by-the-other-user.png")
    GeneratedImage.objects.create(generation=generation, index=0, seed=1, width=64, height=64,
                                  file=f"images/{owner.pk}/kept-by-the-other-user.png", thumbnail=theirs.thumbnail.name)
    mine = write(media, f"images/{owner.pk}/nobodys.png")
    age_all(media)

    report = orphans.sweep()

    assert report.removed == [f"images/{owner.pk}/nobodys.png"] and not mine.exists()
    assert odd_place.exists() and (media / theirs.file.name).exists()


def test_a_dry_run_removes_nothing_and_names_what_would_go(media, owner):
    orphan = write(media, f"thumbs/{owner.pk}/dead.png")
    report = orphans.sweep(dry_run=True)
    assert report.removed == [f"thumbs/{owner.pk}/dead.png"] and orphan.exists()


def test_the_command_prints_what_it_removes(media, owner):
    orphan = write(media, f"images/{owner.pk}/dead.png")
    out = io.StringIO()
    call_command("sweep_orphans", "--dry-run", stdout=out)
    assert f"would remove images/{owner.pk}/dead.png" in out.getvalue() and orphan.exists()
    assert "Would remove 1 orphan file(s)" in out.getvalue()

    out = io.StringIO()
    call_command("sweep_orphans", "--grace-minutes", "180", stdout=out)  # two hours old: young under 3 h
    assert orphan.exists() and "Removed 0 orphan file(s)" in out.getvalue()

    out = io.StringIO()
    call_command("sweep_orphans", stdout=out)
    assert f"removed images/{owner.pk}/dead.png" in out.getvalue() and not orphan.exists()


def test_store_images_killed_between_its_files_and_its_commit_leaves_files_the_sweep_removes(media, owner):
    """A real SIGKILL (what the OOM killer sends): a separate process runs generation.services.
    store_images and is killed where its transaction would begin, after both files were written. Its
    `except` never runs, so the files stay with no row; the sweep removes them once past the grace."""
    kept = make_image(owner)
    script = textwrap.dedent(f"""
        import os, signal
        import django
        django.setup()
        from django.db import transaction
        from generation.models import Generation
        from generation.services import store_images

        def die(*args, **kwargs):  # the files are written; the rows' transaction is next
            os.kill(os.getpid(), signal.SIGKILL)

        transaction.atomic = die
        job = Generation(pk=10**6, owner_id={owner.pk}, width=64, height=64)
        store_images(job, [({png_bytes()!r}, {png_bytes(size=(16, 16))!r})], [7], finish=lambda: True)
    """)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesite.settings", "IMAGESITE_MEDIA_ROOT": str(media),
           "DATABASE_URL": f"sqlite:///{media.parent / 'unused.sqlite3'}"}
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, child.stderr

    left = sorted(str(p.relative_to(media)) for folder in ("images", "thumbs") for p in (media / folder).rglob("*.png"))
    left.remove(kept.file.name), left.remove(kept.thumbnail.name)
    assert len(left) == 2 and not GeneratedImage.objects.filter(file__in=left).exists()
    assert orphans.sweep().removed == []  # just written: within the grace

    age_all(media)
    assert sorted(orphans.sweep().removed) == left
    assert (media / kept.file.name).exists() and (media / kept.thumbnail.name).exists()


def test_generation_inputs_masks_and_prompt_files_count_as_referenced(media, owner):
    job = make_generation(owner, init_image=f"inputs/{owner.pk}/a.png", mask=f"inputs/{owner.pk}/a-mask.png")
    Lora.objects.create(owner=owner, name="style", sha256="0" * 64, file=f"loras/{owner.pk}/b.safetensors")
    for name in (job.init_image.name, job.mask.name, f"loras/{owner.pk}/b.safetensors"):
        write(media, name)
    # _keep_clean's clean PNG written, then the process killed before the row switched to it.
    stray_input = write(media, f"inputs/{owner.pk}/a.upload")
    stray_lora = write(media, f"loras/{owner.pk}/c.safetensors")  # an upload whose row never committed

    report = orphans.sweep()

    assert sorted(report.removed) == [f"inputs/{owner.pk}/a.upload", f"loras/{owner.pk}/c.safetensors"]
    assert not stray_input.exists() and not stray_lora.exists() and report.referenced == 3


def test_training_rules_keep_photos_class_images_and_live_runs_folders_but_not_their_scratch(media, owner):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    prefix = subject.files_prefix()
    SubjectPhoto.objects.create(subject=subject, status=PhotoStatus.PENDING, width=64, height=64, upload=f"photos/{owner.pk}/p.upload")
    running = TrainingRun.objects.create(subject=subject, status=JobStatus.RUNNING, files_dir=f"{prefix}/runs/1")
    done = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, files_dir=f"{prefix}/runs/2",
                                      checkpoint=f"{prefix}/runs/2/lora.safetensors")
    TrainingRun.objects.create(subject=subject, status=JobStatus.FAILED, files_dir=f"{prefix}/runs/3")
    keep = [f"photos/{owner.pk}/p.upload", f"{prefix}/class_images/0.png", f"{running.files_dir}/step-10/x.bin",
            f"{done.files_dir}/lora.safetensors"]
    young_scratch = write(media, f"{running.files_dir}/.staging-cd/lora.safetensors", age_s=60)  # being saved
    go = [f"photos/{owner.pk}/p-crop.png",  # written by a photo task killed before mark_ready
          f"{done.files_dir}/.staging-ef/lora.safetensors",  # a save killed midway, then a retry that succeeded
          f"{prefix}/class_images/.0.png.0123.tmp",  # a class image's write killed before its rename
          f"{prefix}/runs/3/.staging-ab/lora.safetensors",  # a failed run's leftovers (killed mid-save)
          f"{prefix}/runs/9/lora.safetensors",  # a deleted run's folder
          f"subjects/{owner.pk}/999/class_images/0.png"]  # a deleted subject's class images
    for name in keep + go:
        write(media, name)

    report = orphans.sweep()

    assert sorted(report.removed) == sorted(go)
    assert all((media / name).exists() for name in keep) and young_scratch.exists()


def test_exports_keep_the_archive_and_a_running_exports_partial(media, owner, other_user):
    archive = DataExport.objects.create(owner=owner, status=JobStatus.SUCCEEDED, file=f"exports/{owner.pk}/a.zip")
    running = DataExport.objects.create(owner=other_user, status=JobStatus.RUNNING)
    failed = DataExport.objects.create(owner=owner, status=JobStatus.FAILED)
    for name in (archive.file.name, running.partial_name(), failed.partial_name()):
        write(media, name)
    assert orphans.sweep().removed == [failed.partial_name()]


def test_links_are_never_followed_nor_removed(media, tmp_path, owner):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.png"
    target.write_bytes(b"keep me")
    age(target)
    (media / "images" / str(owner.pk)).mkdir(parents=True)
    link = media / "images" / str(owner.pk) / "link.png"
    link.symlink_to(target)
    (media / "thumbs").symlink_to(outside, target_is_directory=True)  # a root on another disk
    (media / "images" / "elsewhere").symlink_to(outside, target_is_directory=True)
    age(link)

    report = orphans.sweep()

    assert report.removed == [] and target.read_bytes() == b"keep me" and link.is_symlink()
    assert report.links_skipped == 2 and report.roots_skipped == ["thumbs"]


def test_folders_no_app_registered_are_left_alone(media):
    other = write(media, "backups/db.sqlite3")
    loose = write(media, "notes.txt")
    assert orphans.sweep().removed == [] and other.exists() and loose.exists()


def test_roots_must_lie_under_the_media_root():
    for bad in ("", "/etc", "../x", "images/../.."):
        with pytest.raises(ValueError):
            orphans.register("bad", roots=(bad,))
    with pytest.raises(ValueError):
        orphans.register("bad", roots=("images",), scratch=("",))
    assert "bad" not in orphans.registered_rules()


def test_thousands_of_files_take_one_walk_and_a_fixed_number_of_queries(media, owner):
    """No query per file: the references are read once, whatever the number of files."""
    generation = make_generation(owner, status=JobStatus.SUCCEEDED)
    n = 2000
    GeneratedImage.objects.bulk_create(
        GeneratedImage(generation=generation, index=i, seed=i, width=64, height=64,
                       file=f"images/{owner.pk}/{i}.png", thumbnail=f"thumbs/{owner.pk}/{i}.png") for i in range(n)
    )
    for i in range(n):
        write(media, f"images/{owner.pk}/{i}.png")
        write(media, f"images/{owner.pk}/orphan-{i}.png")

    with CaptureQueriesContext(connection) as queries:
        report = orphans.sweep()

    assert len(report.removed) == n and report.referenced == n
    assert len(queries) <= 10, [q["sql"] for q in queries]


def test_the_hourly_schedule_is_made_after_migrate():
    from django_q.models import Schedule

    [schedule] = Schedule.objects.filter(func=orphans.SWEEP_TASK)
    assert (schedule.schedule_type, schedule.repeats) == (Schedule.HOURLY, -1)
    orphans.ensure_sweep_schedule()  # again: still one
    assert Schedule.objects.filter(func=orphans.SWEEP_TASK).count() == 1


def test_the_scheduled_task_returns_counts(media, owner):
    write(media, f"images/{owner.pk}/dead.png")
    assert orphans.run_sweep()["removed"] == 1


def test_store_images_own_failure_still_cleans_up(media, owner):
    """The in-process path needs no sweep: a failed insert removes its files itself (services)."""
    from generation.services import store_images

    job = make_generation(owner, status=JobStatus.RUNNING)
    with pytest.raises(RuntimeError):
        store_images(job, [(png_bytes(), png_bytes())], [1], finish=lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not [p for p in media.rglob("*.png")]
    assert not Generation.objects.get(pk=job.pk).images.exists()
