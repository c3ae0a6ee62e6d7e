"""Several base models: the models folder scanned into rows (torch-free), a model picked per job on the
page and through the API, subjects offered only with bases of their family, training on a chosen base,
the admin's list and rescan, and the job page's "Loading model…". The tiny models have random weights:
they test the mechanics (detection, sizes, which files a job names), never image quality."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.urls import reverse
from safetensors.numpy import save_file

from generation import catalog
from generation.models import BaseModel, Generation, ModelOrigin
from generation.services import create_generation
from imagesite.jobs import JobStatus
from training.models import Subject, TrainingRun
from training.services import start_training

from .api_support import anon_api, assert_error, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def models_folder(tiny_model, tmp_path_factory) -> Path:
    """A models folder as an operator fills it: two tiny models (SD 1.x, SDXL) and a LoRA file, which
    is no base model."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model("sd1"), folder / "tiny-sd1")
    shutil.copytree(tiny_model("sdxl"), folder / "tiny-sdxl")
    import numpy as np

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 32), np.float32)},
              str(folder / "my-lora.safetensors"))
    return folder


@pytest.fixture
def offered(settings, models_folder) -> dict[str, BaseModel]:
    settings.IMAGESITE_MODELS_DIR = str(models_folder)
    catalog.refresh_if_changed()
    return {row.family: row for row in BaseModel.objects.offered()}


def trained_subject(owner, base: BaseModel, name: str = "Checkers", token: str = "sks") -> Subject:
    subject = Subject.objects.create(owner=owner, name=name, token=token, class_noun="shape")
    TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors",
                               base_model=base, base_model_name=base.name, base_family=base.family)
    return subject


# --- the scan --------------------------------------------------------------------------------------
def test_scan_offers_each_model_with_family_and_size_and_keeps_the_setting_the_default(settings, offered, models_folder):
    rows = {row.name: row for row in BaseModel.objects.all()}
    default = BaseModel.objects.get(is_default=True)
    assert default.origin == ModelOrigin.SETTING and default.path == settings.IMAGESITE_MODEL and default.family == "sd1"
    assert rows["tiny-sd1"].family == "sd1" and rows["tiny-sdxl"].family == "sdxl" and rows["tiny-sdxl"].family_label == "SDXL"
    size = sum(p.stat().st_size for p in (models_folder / "tiny-sdxl").rglob("*") if p.is_file())
    assert rows["tiny-sdxl"].size_bytes == size > 0
    assert set(offered) == {"sd1", "sdxl"} and BaseModel.objects.offered().count() == 3


def test_an_unsupported_file_is_listed_disabled_with_its_reason(offered):
    lora = BaseModel.objects.get(name="my-lora.safetensors")
    assert lora.problem and "cannot use as a base model" in lora.problem and not lora.is_offered
    assert lora not in BaseModel.objects.offered()


def test_a_model_removed_from_the_folder_goes_and_a_new_one_comes(settings, tmp_path, tiny_model):
    settings.IMAGESITE_MODELS_DIR = str(tmp_path)
    shutil.copytree(tiny_model("sd1"), tmp_path / "first")
    catalog.refresh_if_changed()
    assert BaseModel.objects.filter(name="first").exists()
    (tmp_path / "first").rename(tmp_path / "second")
    catalog.refresh_if_changed()  # the folder changed: scanned again, no command needed
    assert not BaseModel.objects.filter(name="first").exists() and BaseModel.objects.get(name="second").is_offered


def test_changing_imagesite_model_makes_the_new_one_the_default(settings, offered):
    old = BaseModel.objects.get(is_default=True)
    settings.IMAGESITE_MODEL = offered["sdxl"].path
    assert catalog.default_model().pk == offered["sdxl"].pk
    old.refresh_from_db()
    assert not old.enabled and old.origin == ModelOrigin.ADMIN  # kept as the record of older jobs


def test_scan_models_command_lists_them(settings, offered, capsys):
    from django.core.management import call_command

    call_command("scan_models")
    out = capsys.readouterr().out
    assert "tiny-sdxl  [SDXL]" in out and "my-lora.safetensors" in out and "not usable" in out


# --- picking one on the page ---------------------------------------------------------------------------
def test_generate_form_offers_the_models_default_preselected(owner_client, offered):
    response = owner_client.get(reverse("generation-new"))
    field = response.context["form"]["base_model"]
    assert field.value() == catalog.default_model().pk
    assert "tiny-sdxl · SDXL" in response.content.decode() and "my-lora" not in response.content.decode()


def test_defaults_follow_the_model_asked_for(owner_client, offered, tmp_path, settings):
    form = owner_client.get(reverse("generation-new") + f"?model={offered['sdxl'].pk}").context["form"]
    info = offered["sdxl"].info()
    assert form.base_model == offered["sdxl"] and form["guidance_scale"].value() == info.guidance_scale == 6.0


def test_posting_a_model_creates_the_job_on_it(owner, owner_client, offered, django_capture_on_commit_callbacks):
    sdxl = offered["sdxl"]
    data = dict(prompt="a red circle", negative_prompt="", seed="1", steps=4, guidance_scale=6, width=64, height=64,
                scheduler="euler", num_images=1, base_model=sdxl.pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("generation-new"), data)
    generation = Generation.objects.get()
    assert response.status_code == 302 and generation.base_model == sdxl and generation.model_name == "tiny-sdxl"


def test_a_size_outside_the_chosen_models_limits_is_a_field_error(owner_client, offered):
    data = dict(prompt="a red circle", negative_prompt="", seed="", steps=4, guidance_scale=6, width=1024, height=64,
                scheduler="euler", num_images=1, base_model=offered["sdxl"].pk)
    response = owner_client.post(reverse("generation-new"), data)
    assert response.status_code == 400 and list(response.context["form"].errors) == ["width"]
    assert "tiny-sdxl" in response.context["form"].errors["width"][0]


# --- picking one through the API ------------------------------------------------------------------
def test_api_lists_offered_models_default_first(owner_api, offered):
    body = owner_api.get("/api/v1/models/").json()
    assert [m["is_default"] for m in body] == [True, False, False]
    sdxl = next(m for m in body if m["family"] == "sdxl")
    assert sdxl["id"] == offered["sdxl"].pk and sdxl["family_label"] == "SDXL" and sdxl["size_bytes"] > 0
    assert sdxl["defaults"]["guidance_scale"] == 6.0 and all(m["name"] != "my-lora.safetensors" for m in body)


@pytest.mark.parametrize("by", ["id", "name"])
def test_api_create_on_a_model_by_id_or_name(owner_api, offered, by):
    sdxl = offered["sdxl"]
    body = owner_api.post("/api/v1/generations/", {"prompt": "a red circle", "base_model": sdxl.pk if by == "id" else sdxl.name}, format="json").json()
    assert body["base_model"] == sdxl.pk and body["model_name"] == "tiny-sdxl" and body["phase"] == ""
    assert body["guidance_scale"] == 6.0 and body["width"] == sdxl.info().width  # that model's defaults


@pytest.mark.parametrize("value", ["my-lora.safetensors", "nope", 99999, True])
def test_api_refuses_a_model_not_offered(owner_api, offered, value):
    assert_error(owner_api.post("/api/v1/generations/", {"prompt": "a red circle", "base_model": value}, format="json"), 400, "base_model")
    assert not Generation.objects.exists()


def test_api_size_limits_are_the_chosen_models(owner_api, offered):
    response = owner_api.post("/api/v1/generations/", {"prompt": "a red circle", "base_model": "tiny-sdxl", "width": 1024}, format="json")
    assert_error(response, 400, "width")


# --- subjects and families -------------------------------------------------------------------------
def test_a_subject_is_refused_with_a_base_of_another_family(owner, owner_api, offered):
    subject = trained_subject(owner, offered["sd1"])
    body = assert_error(owner_api.post("/api/v1/generations/", {"prompt": "a photo of sks shape", "subject": subject.pk,
                                                                "base_model": "tiny-sdxl"}, format="json"), 400, "subject")
    message = body["errors"]["subject"][0]
    assert "tiny-sd1" in message and "tiny-sdxl" in message and "Stable Diffusion 1.x" in message
    # Without a base model the subject's own base is used.
    body = owner_api.post("/api/v1/generations/", {"prompt": "a photo of sks shape", "subject": subject.pk}, format="json").json()
    assert body["base_model"] == offered["sd1"].pk and body["model_name"] == "tiny-sd1 + Checkers"


def test_the_form_marks_each_subject_with_its_family(owner, owner_client, offered):
    trained_subject(owner, offered["sdxl"], name="Big", token="ohwx")
    html = owner_client.get(reverse("generation-new")).content.decode()
    assert 'data-family="sdxl"' in html and "data-model=" in html


def test_a_subject_trained_before_bases_were_recorded_fits_any(owner, offered):
    subject = Subject.objects.create(owner=owner, name="Old", token="sks", class_noun="shape")
    TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors")
    generation = create_generation(owner=owner, prompt="a photo of sks shape", subject=subject, base_model=offered["sdxl"])
    assert generation.base_model == offered["sdxl"]


# --- training on a chosen base ---------------------------------------------------------------------
def _ready_photos(subject: Subject, count: int = 3) -> None:
    from django.core.files.base import ContentFile

    from training.models import PhotoStatus, SubjectPhoto

    for i in range(count):
        photo = SubjectPhoto(subject=subject, status=PhotoStatus.READY, width=64, height=64)
        photo.crop.save("c.png", ContentFile(b"x"), save=False)
        photo.save()


def test_training_records_the_chosen_base_and_its_family(owner, offered):
    subject = Subject.objects.create(owner=owner, name="New", token="sks", class_noun="shape")
    _ready_photos(subject)
    run = start_training(subject=subject, base_model=offered["sdxl"])
    assert (run.base_model, run.base_model_name, run.base_family) == (offered["sdxl"], "tiny-sdxl", "sdxl")


def test_api_train_takes_a_base_model_by_name(owner, owner_api, offered):
    subject = Subject.objects.create(owner=owner, name="New", token="sks", class_noun="shape")
    _ready_photos(subject)
    body = owner_api.post(f"/api/v1/subjects/{subject.pk}/train/", {"base_model": "tiny-sdxl", "steps": 2}, format="json").json()
    assert body["base_model"] == offered["sdxl"].pk and body["base_family"] == "sdxl"
    run = TrainingRun.objects.get()
    assert run.options == {"steps": 2}


def test_the_train_button_trains_on_the_base_chosen_on_the_page(owner, owner_client, offered):
    from django.urls import reverse

    subject = Subject.objects.create(owner=owner, name="New", token="sks", class_noun="shape")
    _ready_photos(subject)
    form = owner_client.get(reverse("subject-detail", args=[subject.pk])).context["training_form"]
    data = {name: field.initial for name, field in form.fields.items() if field.initial not in (None, False)}
    data.update(method="lora", steps=2, base_model=offered["sdxl"].pk)
    owner_client.post(reverse("subject-train", args=[subject.pk]), data)
    run = TrainingRun.objects.get()
    assert (run.base_model, run.base_family) == (offered["sdxl"], "sdxl")


def test_a_run_on_a_bigger_base_crops_the_full_photo_again(owner):
    """Photos are cropped at the default model's size when uploaded (64 px for the demo); a run on a
    bigger base takes a new crop of that size from the cleaned full photo, not the small crop scaled up."""
    import io

    from django.core.files.base import ContentFile
    from PIL import Image

    from training.models import PhotoStatus, SubjectPhoto
    from training.tasks import _training_image

    def png(size, colour):
        buf = io.BytesIO()
        Image.new("RGB", size, colour).save(buf, "PNG")
        return ContentFile(buf.getvalue())

    subject = Subject.objects.create(owner=owner, name="New", token="sks", class_noun="shape")
    photo = SubjectPhoto(subject=subject, status=PhotoStatus.READY, width=800, height=600)
    photo.image.save("full.png", png((800, 600), (200, 10, 10)), save=False)
    photo.crop.save("crop.png", png((64, 64), (10, 10, 200)), save=False)
    photo.save()
    assert _training_image(photo, 64).getpixel((5, 5)) == (10, 10, 200)  # the stored crop
    big = _training_image(photo, 512)
    assert big.size == (512, 512) and big.getpixel((5, 5)) == (200, 10, 10)


def test_training_form_offers_the_bases_default_first(offered):
    from training.forms import TrainingForm

    form = TrainingForm()
    assert form.fields["base_model"].initial == catalog.default_model().pk
    assert set(form.fields["base_model"].queryset) == set(BaseModel.objects.offered())


# --- admin ---------------------------------------------------------------------------------------------
@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", password="x-admin-pass-1"))
    return client


def test_admin_lists_models_and_rescans(admin_client, offered, settings, tmp_path):
    page = admin_client.get(reverse("admin:generation_basemodel_changelist")).content.decode()
    assert "tiny-sdxl" in page and "SDXL" in page and "Rescan models folder" in page and "cannot use as a base model" in page
    settings.IMAGESITE_MODELS_DIR = str(tmp_path)  # emptied: the folder's rows go
    response = admin_client.post(reverse("admin:generation_basemodel_rescan"))
    assert response.status_code == 302 and not BaseModel.objects.filter(origin=ModelOrigin.FOLDER).exists()


def test_admin_adds_a_model_by_path(admin_client, offered, tiny_model):
    response = admin_client.post(reverse("admin:generation_basemodel_add"), {"name": "", "path": str(tiny_model("sd2")), "enabled": "on"})
    assert response.status_code == 302
    row = BaseModel.objects.get(path=str(tiny_model("sd2")))
    assert row.origin == ModelOrigin.ADMIN and row.family == "sd2" and row.is_offered and row.size_bytes > 0


# --- the job page while the worker loads a model ---------------------------------------------------------
def test_job_page_and_api_say_loading_model(owner, owner_client, owner_api, offered):
    generation = make_generation(owner, status=JobStatus.RUNNING, base_model=offered["sdxl"], phase="loading", progress_total=4)
    html = owner_client.get(reverse("generation-detail", args=[generation.pk])).content.decode()
    assert "Loading model tiny-sdxl…" in html and "step 0 of" not in html
    assert owner_api.get(f"/api/v1/generations/{generation.pk}/").json()["phase"] == "loading"
    Generation.objects.filter(pk=generation.pk).update(phase="rendering", progress_step=1)
    assert "step 1 of 4" in owner_client.get(reverse("generation-detail", args=[generation.pk])).content.decode()


# --- the page's script, in a real browser ------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium")
def test_picking_a_model_in_the_browser_follows_its_defaults_and_family(live_server, owner, offered, monkeypatch):
    """Picking SDXL in the form sets its defaults and hides a subject trained on SD 1.x (Debian's
    chromium through Playwright, as tests/test_browser.py drives it)."""
    from django.test import Client
    from playwright.sync_api import sync_playwright

    from .test_browser import CHROMIUM, CHROMIUM_ARGS

    trained_subject(owner, offered["sd1"])
    client = Client()
    client.force_login(owner)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
        page = context.new_page()
        page.goto(live_server.url + reverse("generation-new"))
        subject_option = page.locator("#subject-helper option[data-family='sd1']")
        default_guidance = catalog.default_model().info().guidance_scale
        assert float(page.locator("#id_guidance_scale").input_value()) == default_guidance != 6.0
        assert not subject_option.is_disabled()
        page.select_option("#id_base_model", str(offered["sdxl"].pk))
        assert page.locator("#id_guidance_scale").input_value() == "6"
        assert page.locator("#id_width").get_attribute("max") == str(offered["sdxl"].info().max_size)
        assert subject_option.is_disabled()
        page.select_option("#id_base_model", str(offered["sd1"].pk))
        assert not subject_option.is_disabled()
        browser.close()
