"""Owning your data: a user downloads everything they own as one zip made by a worker (the task
function run here as the worker runs it), shown on the account page and in the API; the link
expires; staff export or delete a user from the admin; deleting the account leaves nothing."""
from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imagesite.accounts import delete_account
from imagesite.export import request_export, run_export, sweep_exports
from imagesite.jobs import JobStatus
from imagesite.models import DataExport
from training import services as training_services
from training.models import Subject, TrainingRun
from training.tasks import process_photo

from .conftest import PASSWORD
from .factories import make_generation, make_image, png_bytes

pytestmark = pytest.mark.django_db

PARAMETERS = "a red circle\nSteps: 4, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 7, Size: 64x64"


@pytest.fixture
def media(settings, tmp_path):
    """A media folder of this test's own, so "nothing left" means nothing."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _png_with_settings() -> bytes:
    info = PngInfo()
    info.add_text("parameters", PARAMETERS)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _everything_of(user) -> dict:
    """An image whose PNG carries its settings, a subject with processed photos and a LoRA run."""
    image = make_image(user)
    Path(image.file.path).write_bytes(_png_with_settings())
    subject = Subject.objects.create(owner=user, name="Checkers", token="sks", class_noun="shape")
    files = [SimpleUploadedFile(f"{i}.png", png_bytes((40 * i, 90, 200), (96, 80)), content_type="image/png") for i in range(2)]
    for photo in training_services.add_photos(subject=subject, files=files).accepted:
        process_photo(photo.pk)
    files_dir = f"{subject.files_prefix()}/runs/1"
    checkpoint = default_storage.save(f"{files_dir}/lora.safetensors", ContentFile(b"lora weights"))
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, files_dir=files_dir, checkpoint=checkpoint,
                                     finished_at=timezone.now())
    return {"image": image, "subject": subject, "run": run}


def _lora_of(user):
    from generation.models import Lora

    lora = Lora(owner=user, name="ink style", sha256="0" * 64, size_bytes=7)
    lora.file.save("x.safetensors", ContentFile(b"my lora"), save=False)
    lora.save()
    return lora


def _export(user, captured) -> DataExport:
    """Request an export and run its task as the worker does (the queued message is not delivered)."""
    with captured():
        export, created = request_export(user=user)
    assert created
    assert run_export(export.pk) == "succeeded"
    export.refresh_from_db()
    return export


def _zip(response) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_the_archive_holds_everything_of_yours_and_nothing_of_anyone_else(owner, other_user, owner_client, media, django_capture_on_commit_callbacks):
    mine = _everything_of(owner)
    _lora_of(owner)
    theirs = make_image(other_user, prompt="not yours")
    Path(theirs.file.path).write_bytes(b"\x89PNG theirs")
    export = _export(owner, django_capture_on_commit_callbacks)
    assert export.status == JobStatus.SUCCEEDED and export.size_bytes > 0 and export.progress_percent == 100
    assert export.expires_at > timezone.now() + timedelta(hours=23)
    assert not default_storage.exists(export.partial_name())

    response = owner_client.get(reverse("account-export-download", args=[export.pk]))
    assert response.status_code == 200 and response["Content-Disposition"].startswith('attachment; filename="imagesite-owner-')
    archive = _zip(response)
    names = archive.namelist()
    image_path = f"images/{mine['image'].download_name()}"
    assert image_path in names and not any(n.startswith("images/") and n != image_path for n in names)
    assert Image.open(io.BytesIO(archive.read(image_path))).text["parameters"] == PARAMETERS  # metadata intact
    folder = f"subjects/{mine['subject'].pk}-Checkers"
    assert len([n for n in names if n.startswith(f"{folder}/photos/")]) == 2
    assert archive.read(f"{folder}/run-{mine['run'].pk}/sks.safetensors") == b"lora weights"  # named as the subject page offers it
    jobs = json.loads(archive.read("jobs.json"))
    assert [g["prompt"] for g in jobs["generations"]] == ["a red circle on a blue background"]
    assert jobs["generations"][0]["images"][0]["path"] == image_path and jobs["generations"][0]["steps"] == 4
    assert jobs["training_runs"][0]["checkpoint"] == f"{folder}/run-{mine['run'].pk}/sks.safetensors"
    assert [s["token"] for s in jobs["subjects"]] == ["sks"]
    assert archive.read("loras/ink-style.safetensors") == b"my lora" and jobs["loras"][0]["name"] == "ink style"
    assert json.loads(archive.read("account.json"))["username"] == "owner"
    assert b"not yours" not in b"".join(archive.read(n) for n in names) and b"theirs" not in archive.read("jobs.json")


def test_one_export_at_a_time(owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        first, created = request_export(user=owner)
        again, created_again = request_export(user=owner)
    assert created and not created_again and again.pk == first.pk


def test_only_the_owner_downloads(owner, other_client, owner_client, media, django_capture_on_commit_callbacks):
    export = _export(owner, django_capture_on_commit_callbacks)
    url = reverse("account-export-download", args=[export.pk])
    assert other_client.get(url).status_code == 404
    assert Client().get(url).status_code == 302  # to the login
    assert owner_client.post(url).status_code == 405


def test_an_expired_link_says_so_and_the_sweep_deletes_the_archive(owner, owner_client, media, django_capture_on_commit_callbacks):
    export = _export(owner, django_capture_on_commit_callbacks)
    stored = export.file.name
    DataExport.objects.filter(pk=export.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = owner_client.get(reverse("account-export-download", args=[export.pk]))
    assert response.status_code == 410 and "This archive expired" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_exports()["deleted"] == 1
    assert not default_storage.exists(stored) and not DataExport.objects.filter(pk=export.pk).exists()
    response = owner_client.get(reverse("account-export-download", args=[export.pk]))
    assert response.status_code == 404 and "expired" in response.content.decode()


def test_deleting_the_account_deletes_its_exports_and_files(owner, other_user, media, django_capture_on_commit_callbacks):
    _everything_of(owner)
    theirs = make_image(other_user)
    export = _export(owner, django_capture_on_commit_callbacks)
    assert default_storage.exists(export.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        delete_account(user=owner)
    assert not DataExport.objects.exists()
    left = sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())
    assert left == sorted([theirs.file.name, theirs.thumbnail.name])
    assert not (media / "exports" / str(owner.pk)).exists()


def test_deleting_the_account_deletes_its_uploaded_loras_files(owner, media, django_capture_on_commit_callbacks):
    lora = _lora_of(owner)
    with django_capture_on_commit_callbacks(execute=True):
        delete_account(user=owner)
    assert not default_storage.exists(lora.file.name)


def test_an_export_of_a_deleted_account_stops_and_leaves_no_file(owner, media, django_capture_on_commit_callbacks):
    make_generation(owner)
    with django_capture_on_commit_callbacks():
        export, _ = request_export(user=owner)
    partial = export.partial_name()
    with django_capture_on_commit_callbacks(execute=True):
        delete_account(user=owner)
    assert run_export(export.pk) == "deleted before it ran"
    assert not default_storage.exists(partial)


def test_the_api_prepares_reports_and_serves_the_export(owner, other_user, media, django_capture_on_commit_callbacks):
    from api.models import ApiToken

    make_image(owner)
    _, key = ApiToken.create_for(owner, "script")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get("/api/v1/me/export/").status_code == 404
    assert api.get("/api/v1/me/export/archive/").status_code == 404
    with django_capture_on_commit_callbacks():
        created = api.post("/api/v1/me/export/")
        again = api.post("/api/v1/me/export/")
    assert created.status_code == 202 and created.json()["status"] == "queued" and created.json()["download_url"] is None
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]  # one at a time
    assert api.get("/api/v1/me/export/archive/").status_code == 404  # not made yet

    run_export(created.json()["id"])
    body = api.get("/api/v1/me/export/").json()
    assert body["status"] == "succeeded" and body["progress"]["percent"] == 100 and not body["expired"]
    assert body["download_url"] == "http://testserver/api/v1/me/export/archive/"
    response = api.get(body["download_url"])
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert any(n.startswith("images/") for n in _zip(response).namelist())
    other = Client()
    other.force_login(other_user)
    assert other.get("/api/v1/me/export/archive/").status_code == 404  # theirs is theirs: "me" is the caller

    DataExport.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.get("/api/v1/me/export/archive/")
    assert response.status_code == 410 and response.json()["code"] == "gone" and "expired" in response.json()["detail"]
    assert api.get("/api/v1/me/export/").json()["download_url"] is None


def test_the_account_page_shows_the_section_and_its_progress(owner, owner_client, media, django_capture_on_commit_callbacks):
    page = owner_client.get(reverse("api-account")).content.decode()
    assert 'id="export"' in page and reverse("account-export") in page
    section = owner_client.get(reverse("account-export"), HTTP_HX_REQUEST="true").content.decode()
    assert "Prepare my archive" in section and "every 1s" not in section
    with django_capture_on_commit_callbacks():
        response = owner_client.post(reverse("account-export"), HTTP_HX_REQUEST="true")
    assert "waiting for the worker" in response.content.decode() and "every 1s" in response.content.decode()
    export = DataExport.objects.get(owner=owner)
    run_export(export.pk)
    section = owner_client.get(reverse("account-export"), HTTP_HX_REQUEST="true").content.decode()
    assert reverse("account-export-download", args=[export.pk]) in section and "the link expires" in section
    response = owner_client.post(reverse("account-export"))  # without htmx: back to the account page
    assert response.status_code == 302 and response["Location"] == reverse("api-account")


@pytest.fixture
def staff_client(django_user_model) -> Client:
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("operator", password="x-long-enough-passphrase"))
    return staff


def test_staff_export_a_user_and_download_it_from_the_admin(owner, owner_client, staff_client, media, django_capture_on_commit_callbacks):
    make_image(owner)
    changelist = reverse("admin:auth_user_changelist")
    with django_capture_on_commit_callbacks():
        response = staff_client.post(changelist, {"action": "export_data", "_selected_action": [owner.pk]}, follow=True)
    assert "Preparing 1 export" in response.content.decode()
    export = DataExport.objects.get(owner=owner)
    run_export(export.pk)
    listing = staff_client.get(reverse("admin:imagesite_dataexport_changelist")).content.decode()
    url = reverse("admin:imagesite_dataexport_archive", args=[export.pk])
    assert url in listing
    response = staff_client.get(url)
    assert response.status_code == 200 and any(n.startswith("images/") for n in _zip(response).namelist())
    assert owner_client.get(url).status_code == 302  # the admin's login: not for users, not even the owner


def test_staff_delete_an_account_and_all_files_after_the_confirmation_page(owner, staff_client, media, django_capture_on_commit_callbacks):
    _everything_of(owner)
    export = _export(owner, django_capture_on_commit_callbacks)
    changelist = reverse("admin:auth_user_changelist")
    assert "Delete account and all files" in staff_client.get(changelist).content.decode()
    confirm = staff_client.post(changelist, {"action": "delete_selected", "_selected_action": [owner.pk]})
    assert confirm.status_code == 200 and "Are you sure" in confirm.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(changelist, {"action": "delete_selected", "_selected_action": [owner.pk], "post": "yes"})
    assert not DataExport.objects.filter(pk=export.pk).exists()
    assert sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()) == []


def test_the_sweep_runs_every_minute_and_requeues_an_export_whose_worker_died(owner, django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    assert Schedule.objects.filter(func="imagesite.export.sweep_exports", minutes=1).exists()  # made after migrate
    stale = timezone.now() - timedelta(hours=1)
    dead = DataExport.objects.create(owner=owner, status=JobStatus.RUNNING, attempts=1, heartbeat_at=stale)
    failed = DataExport.objects.create(owner=owner, status=JobStatus.FAILED, finished_at=stale - timedelta(days=1))
    with django_capture_on_commit_callbacks() as queued:
        assert sweep_exports() == {"deleted": 1, "requeued": 1, "failed": 0}
    dead.refresh_from_db()
    assert dead.status == JobStatus.QUEUED and not DataExport.objects.filter(pk=failed.pk).exists()
    assert [c.__qualname__ for c in queued if "enqueue" in c.__qualname__]  # its task queued again


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_of_the_default_cluster_makes_the_archive(owner, worker):
    from .conftest import wait_for_status

    image = make_image(owner)
    export, _ = request_export(user=owner)  # queued on commit, as the pages and the API do
    wait_for_status(export, JobStatus.SUCCEEDED, timeout=60)
    with zipfile.ZipFile(default_storage.path(export.file.name)) as archive:
        assert f"images/{image.download_name()}" in archive.namelist()


@pytest.mark.browser
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_in_a_browser_prepare_download_then_delete_the_account(live_server, worker, owner, monkeypatch, tmp_path):
    """The round trip a person makes: account page → Prepare my archive → progress → Download (a
    real qcluster makes it) → Delete account with the password → nothing of theirs is left."""
    from playwright.sync_api import expect, sync_playwright

    from .test_browser import CHROMIUM_ARGS, SCREENSHOTS

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls beside Playwright's event loop
    image = make_image(owner)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800}, accept_downloads=True)
        page.set_default_timeout(30_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", "owner")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{live_server.url}/accounts/api/#export")
        expect(page.locator("#export-section")).to_be_visible()  # loaded into the account page
        page.locator("#export").screenshot(path=str(SCREENSHOTS / "account-export-before.png"))
        page.click("text=Prepare my archive")  # htmx posts and swaps the section, which then polls
        download_link = page.locator("#export-section a", has_text="Download archive")
        expect(download_link).to_be_visible()
        expect(page.locator("#export-section")).to_contain_text("the link expires")
        page.locator("#export").screenshot(path=str(SCREENSHOTS / "account-export-ready.png"))
        with page.expect_download() as download:
            download_link.click()
        saved = tmp_path / "archive.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            assert f"images/{image.download_name()}" in archive.namelist()
        archive_name = DataExport.objects.get(owner=owner).file.name

        page.goto(f"{live_server.url}/accounts/delete/")
        page.fill("#id_password", PASSWORD)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button.danger")
        expect(page.locator("body")).to_contain_text("Deleted the account owner")
        browser.close()
    assert not DataExport.objects.exists()
    assert not default_storage.exists(archive_name) and not default_storage.exists(image.file.name)
