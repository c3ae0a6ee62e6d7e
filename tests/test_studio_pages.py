"""The Generate page as one place to work (issue 16): it keeps its settings after submitting, shows
the new job with its progress and images, polls "Recent", takes an input image, a mask and hires
settings to the service, and starts from a gallery image ("Use as input", "Inpaint", "Upscale")."""
from __future__ import annotations

import inspect

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django_q.models import OrmQ

from generation import services
from generation.models import Generation
from generation.rules import current_model
from imagesite.jobs import JobStatus

from .factories import make_generation, make_image, png_bytes

pytestmark = pytest.mark.django_db
PAGE = reverse("generation-new")


def form_data(**overrides) -> dict:
    info = current_model()
    data = dict(prompt="a red circle on a blue background", negative_prompt="", seed="42", steps=7, guidance_scale=5.5,
                width=info.width, height=info.height, scheduler=info.scheduler, num_images=2)
    data.update(overrides)
    return data


def upload(name: str, size=(64, 64), color=(200, 30, 30)) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, png_bytes(color, size), content_type="image/png")


def _service_takes(name: str) -> bool:
    return name in inspect.signature(services.create_generation).parameters


def test_submitting_comes_back_to_the_page_with_the_settings_and_the_job(owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(PAGE, form_data())
    job = Generation.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{PAGE}?job={job.pk}#job"  # post/redirect/get
    page = owner_client.get(response["Location"])
    form = page.context["form"]
    assert (form["prompt"].value(), form["seed"].value(), form["steps"].value(), form["guidance_scale"].value(), form["num_images"].value()) == (
        "a red circle on a blue background", 42, 7, 5.5, 2)
    html = page.content.decode()
    # the job's panel polls the job page's partial, as the job page does
    assert 'id="job-status"' in html and f'hx-get="{job.get_absolute_url()}?studio=1"' in html and 'hx-trigger="every 1s"' in html
    assert f'href="{job.get_absolute_url()}"' in html  # the job page stays for deep links
    # the panel's Cancel leads back here; on the job page it stays there
    partial = owner_client.get(job.get_absolute_url(), {"studio": "1"}, HTTP_HX_REQUEST="true").content.decode()
    assert f'hx-get="{job.get_absolute_url()}?studio=1"' in partial and 'name="next" value="studio"' in partial
    canceled = owner_client.post(reverse("generation-cancel", args=[job.pk]), {"next": "studio"})
    assert canceled["Location"] == response["Location"]
    assert 'name="next"' not in owner_client.get(job.get_absolute_url()).content.decode()
    assert 'enctype="multipart/form-data"' in html


def test_a_finished_job_shows_its_images_in_a_grid(owner, owner_client):
    image = make_image(owner)
    html = owner_client.get(PAGE, {"job": image.generation_id}).content.decode()
    assert 'class="images result-grid"' in html and reverse("image-file", args=[image.pk]) in html
    assert "hx-trigger=\"every 1s\"" not in html  # done: no more polling of the job


def test_another_users_job_is_not_shown(owner, other_client):
    job = make_generation(owner, prompt="a secret prompt")
    response = other_client.get(PAGE, {"job": job.pk})
    assert response.status_code == 200 and "a secret prompt" not in response.content.decode()
    assert 'id="job-status"' not in response.content.decode()


def test_recent_updates_itself_and_shows_thumbnails(owner, other_user, owner_client):
    image = make_image(owner, prompt="a finished one")
    make_image(other_user, prompt="not mine")
    idle = owner_client.get(reverse("generation-recent")).content.decode()
    assert 'hx-trigger="every 10s, job-ended from:body"' in idle and reverse("image-thumbnail", args=[image.pk]) in idle
    assert "<html" not in idle and "not mine" not in idle
    make_generation(owner, status=JobStatus.RUNNING, progress_step=2, progress_total=4)
    busy = owner_client.get(PAGE).content.decode()
    assert 'hx-get="/recent/"' in busy and 'hx-trigger="every 2s, job-ended from:body"' in busy and "50%" in busy
    ended = owner_client.get(image.generation.get_absolute_url(), HTTP_HX_REQUEST="true")  # the job panel's last poll
    assert ended["HX-Trigger"] == "job-ended"
    assert owner_client.post(reverse("generation-recent")).status_code == 405


def test_input_image_and_mask_settings_reach_the_job(owner, owner_client, django_capture_on_commit_callbacks):
    data = form_data(width="", height="", strength="0.4", mask_blur="9", num_images=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(PAGE, {**data, "init_image": upload("in.png", (64, 48)), "mask": upload("m.png", (64, 48), (255, 255, 255))})
    assert response.status_code == 302, response.context["form"].errors
    job = Generation.objects.get()
    assert (job.strength, job.mask_blur) == (0.4, 9) and job.init_image and job.mask and OrmQ.objects.count() == 1
    if _service_takes("init_image"):  # the img2img service: a blank size follows the input
        assert (job.width, job.height) == (64, 48)


def test_the_next_job_reuses_the_uploaded_input_and_its_mask(owner, owner_client, django_capture_on_commit_callbacks):
    """A browser cannot refill a file input, so the page after an upload carries the job's input."""
    files = {"init_image": upload("in.png", (64, 48)), "mask": upload("m.png", (64, 48), (255, 255, 255))}
    with django_capture_on_commit_callbacks(execute=True):
        first = owner_client.post(PAGE, {**form_data(width="", height="", num_images=1), **files})
    job = Generation.objects.get()
    page = owner_client.get(first["Location"])
    html = page.content.decode()
    assert page.context["form"]["input_job"].value() == job.pk
    assert f'src="{reverse("generation-input", args=[job.pk])}"' in html and f'data-mask="{reverse("generation-mask", args=[job.pk])}"' in html
    assert owner_client.get(reverse("generation-input", args=[job.pk])).status_code == 200
    assert 'id="mask-painter" open' in html  # the carried mask is shown, not reused unseen
    assert reverse("generation-mask", args=[job.pk]) in owner_client.get(job.get_absolute_url()).content.decode()  # the job page shows both
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(PAGE, form_data(width="", height="", num_images=1, input_job=job.pk, seed="43"))
    again = Generation.objects.get(seed=43)
    assert again.init_image and again.init_image.name != job.init_image.name and not again.mask
    with again.init_image.open("rb") as a, job.init_image.open("rb") as b:
        assert a.read() == b.read()


def test_another_users_job_input_is_neither_served_nor_reused(owner, other_client):
    job = make_generation(owner)
    job.init_image.save("in", ContentFile(png_bytes()), save=True)
    job.mask.save("m", ContentFile(png_bytes()), save=True)
    assert other_client.get(reverse("generation-input", args=[job.pk])).status_code == 404
    assert other_client.get(reverse("generation-mask", args=[job.pk])).status_code == 404
    response = other_client.post(PAGE, form_data(input_job=job.pk))
    assert response.status_code == 400 and list(response.context["form"].errors) == ["input_job"]


def test_hires_settings_reach_the_job(owner_client, django_capture_on_commit_callbacks):
    data = form_data(hires_scale="1.5", hires_upscaler="lanczos", hires_strength="0.55", hires_steps="3")
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(PAGE, data)
    assert response.status_code == 302, response.context["form"].errors
    job = Generation.objects.get()
    assert (job.hires_scale, job.hires_upscaler, job.hires_strength, job.hires_steps) == (1.5, "lanczos", 0.55, 3)
    form = owner_client.get(response["Location"]).context["form"]
    assert form["hires_scale"].value() == 1.5 and form.hires_open()  # the section stays open while in use


def test_a_gallery_image_as_input_reaches_the_job(owner, owner_client, django_capture_on_commit_callbacks):
    source = make_image(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(PAGE, form_data(source_image=source.pk, strength="0.3"))
    job = Generation.objects.get(source_image__isnull=False)
    assert response.status_code == 302 and job.source_image == source and job.strength == 0.3
    page = owner_client.get(response["Location"])
    assert page.context["form"]["source_image"].value() == source.pk  # the next job starts from it too
    assert reverse("image-thumbnail", args=[source.pk]) in page.content.decode()


@pytest.mark.parametrize("field, overrides, files", [
    ("strength", {"strength": "1.5"}, {}),
    ("hires_scale", {"hires_scale": "9"}, {}),
    ("hires_upscaler", {"hires_upscaler": "bicubic"}, {}),
    ("mask", {}, {"mask": "white"}),  # a mask with nothing to paint on
    ("mask", {}, {"init_image": "red", "mask": "small"}),  # a mask of another size than the input
])
def test_bad_input_gets_its_field_message_and_queues_nothing(owner_client, field, overrides, files, django_capture_on_commit_callbacks):
    if files.get("mask") == "small" and not _service_takes("mask"):
        pytest.skip("the mask's size is checked by the img2img service, not merged yet")
    made = {"white": lambda: upload("m.png", color=(255, 255, 255)), "red": lambda: upload("in.png"),
            "small": lambda: upload("m.png", (32, 32), (255, 255, 255))}
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(PAGE, {**form_data(**overrides), **{name: made[kind]() for name, kind in files.items()}})
    assert response.status_code == 400
    assert list(response.context["form"].errors) == [field], response.context["form"].errors
    assert not Generation.objects.exists() and OrmQ.objects.count() == 0
    if field == "mask":
        assert 'id="mask-painter" open' in response.content.decode()  # the painter shows where the problem is


def test_another_users_image_cannot_be_the_input(owner, other_client):
    theirs = make_image(owner)
    response = other_client.post(PAGE, form_data(source_image=theirs.pk))
    assert response.status_code == 400 and list(response.context["form"].errors) == ["source_image"]
    assert other_client.get(PAGE, {"source_image": theirs.pk}).context["form"]["source_image"].value() is None


def test_use_as_input_inpaint_and_upscale_open_the_page_prefilled(owner, owner_client):
    image = make_image(owner, prompt="a green star", seed=5)
    used = owner_client.get(PAGE, {"source_image": image.pk})
    form = used.context["form"]
    assert form["source_image"].value() == image.pk and form["prompt"].value() == "a green star"
    assert form["width"].value() is None and form["num_images"].value() == 1  # the size follows the input
    assert 'id="mask-painter" open' not in used.content.decode()
    assert 'id="mask-painter" open' in owner_client.get(PAGE, {"source_image": image.pk, "inpaint": "1"}).content.decode()
    upscale = owner_client.get(PAGE, {"source_image": image.pk, "upscale": "2"}).context["form"]
    assert (upscale["width"].value(), upscale["height"].value(), upscale["strength"].value()) == (128, 128, 0.3)  # 2x 64, the demo's maximum
    for odd in ("nan", "x", "-3"):
        assert owner_client.get(PAGE, {"source_image": image.pk, "upscale": odd}).status_code == 200


def test_gallery_and_image_page_offer_the_actions(owner, owner_client):
    image = make_image(owner)
    links = [f"{PAGE}?source_image={image.pk}", f"{PAGE}?source_image={image.pk}&amp;inpaint=1",
             f"{PAGE}?source_image={image.pk}&amp;upscale=2", f"{PAGE}?again={image.generation_id}&amp;image={image.pk}"]
    for url in (reverse("gallery"), image.get_absolute_url()):
        html = owner_client.get(url).content.decode()
        assert all(link in html for link in links), url


def test_subjects_are_offered_as_lora_tags_and_old_subject_links_still_work(owner, owner_client):
    from training.models import Subject, TrainingRun

    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors")
    html = owner_client.get(PAGE).content.decode()
    assert 'data-tag="&lt;lora:sks:1&gt;"' in html and 'data-words="sks shape"' in html
    # what the helper writes is taken (the subject's LoRA, by its token), with no "no subject was chosen" hint
    page = owner_client.post(PAGE, form_data(prompt="a photo of sks shape <lora:sks:1>"), follow=True)
    assert Generation.objects.get().loras[0]["id"] == subject.pk and "no subject was chosen" not in page.content.decode()
    linked = owner_client.get(PAGE, {"subject": subject.pk})  # a subject page's "Generate with" link
    assert linked.context["form"]["subject"].value() in (subject, subject.pk) and 'id="attached-subject"' in linked.content.decode()
