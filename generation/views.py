from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from imagesite.files import private_file_response
from imagesite.job_pages import retry_from_page
from imagesite.quotas import QuotaExceeded

from .forms import UPSCALE_STRENGTH, GalleryFilterForm, GenerateForm, initial_from_job, upscaled_size
from .gallery_pages import gallery_page
from .inputs import stored_content_type
from .models import GeneratedImage, Generation, subjects_of, usable_subjects
from .rules import mentions_token
from .services import create_generation, filter_by_words, filter_images

GALLERY_PAGE_SIZE = 24
RECENT_COUNT = 8


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    return get_object_or_404(Generation.objects.for_user(request.user), pk=pk)


def _get_image_for_user(request: HttpRequest, pk: int) -> GeneratedImage:
    return get_object_or_404(GeneratedImage.objects.for_user(request.user).select_related("generation"), pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HttpRequest) -> HttpResponse:
    """The studio: the form, the job just submitted (?job=<id>: its progress, preview and images, the
    form filled from it) and the recent jobs. A valid POST redirects back here (post/redirect/get)."""
    job = None
    if request.method == "POST":
        form = GenerateForm(request.POST, request.FILES, owner=request.user)
        status = 400
        if form.is_valid():
            try:
                generation = create_generation(owner=request.user, **form.service_kwargs())
                _hint_unattached_subject(request, generation)
                return redirect(studio_url(generation))
            except QuotaExceeded as exc:
                form.add_error(None, exc.message)
                status = 429
            except ValidationError as exc:
                _add_service_errors(form, exc)
    else:
        job = _job_from_query(request)
        form, status = GenerateForm(initial=initial_from_job(job) if job else _initial_from_query(request), owner=request.user), 200
        if job is None and (factor := _upscale_factor(request)) and (source := form.chosen("source_image")):
            width, height = upscaled_size(source.width, source.height, form.model_info, factor)
            form.initial.update(width=width, height=height, strength=UPSCALE_STRENGTH)
    return render(request, "generation/generate.html", _studio_context(request, form, job), status=status)


def _upscale_factor(request: HttpRequest) -> float | None:
    """&upscale=<factor> ("Upscale" on an image: 2), from 1 to 4; None when absent or not a number."""
    try:
        factor = float(request.GET["upscale"])
    except (KeyError, ValueError):
        return None
    return min(max(factor, 1.0), 4.0) if math.isfinite(factor) else None


def studio_url(generation: Generation) -> str:
    """The Generate page showing this job (and its settings in the form)."""
    return f"{reverse('generation-new')}?job={generation.pk}#job"


def _job_from_query(request: HttpRequest) -> Generation | None:
    pk = request.GET.get("job", "")
    return Generation.objects.for_user(request.user).filter(pk=pk).first() if pk.isdigit() else None


def _studio_context(request: HttpRequest, form: GenerateForm, job: Generation | None) -> dict:
    chosen = _chosen_input(form, job)
    return {
        "form": form, "model": form.model_info, "base_model": form.base_model, "presets": getattr(form.model_info, "aspect_presets", ()),
        "subjects": form.subjects, "subject": form.chosen("subject"), "input": chosen,
        # open where there is something to paint or to see: asked for, a mask carried over, or a mask error
        "open_mask_editor": request.GET.get("inpaint") == "1" or bool(chosen and chosen.get("mask")) or bool(form["mask"].errors),
        "generation": job, "images": job.images.order_by("index") if job else (), "studio": True, **_recent(request),
    }


def _chosen_input(form: GenerateForm, job: Generation | None) -> dict | None:
    """The input image the form starts from, for its thumbnail and the mask painter: a gallery image,
    or an earlier job's uploaded input; with the shown job's mask when the input is that job's."""
    if source := form.chosen("source_image"):
        chosen = {"thumb": reverse("image-thumbnail", args=[source.pk]), "full": reverse("image-file", args=[source.pk]),
                  "text": f"From the gallery ({source.width}×{source.height})"}
        same_input = job is not None and job.source_image_id == source.pk
    elif earlier := form.chosen("input_job"):
        url = reverse("generation-input", args=[earlier.pk])
        chosen, same_input = {"thumb": url, "full": url, "text": "The input of that job"}, job is not None and job.pk == earlier.pk
    else:
        return None
    if same_input and job.mask:
        chosen["mask"] = reverse("generation-mask", args=[job.pk])
    return chosen


def _add_service_errors(form: GenerateForm, exc: ValidationError) -> None:
    """The service's errors next to their fields (keys the form lacks go on top of the form)."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        form.add_error(field if field in form.fields else None, errors)


def _recent(request: HttpRequest) -> dict:
    recent = list(Generation.objects.for_user(request.user).prefetch_related("images")[:RECENT_COUNT])
    return {"recent": recent, "recent_active": any(g.is_active for g in recent)}


@login_required
@require_GET
def generation_recent(request: HttpRequest) -> HttpResponse:
    """The Generate page's "Recent" list (polled by the page)."""
    return render(request, "generation/_recent.html", _recent(request))


def _hint_unattached_subject(request: HttpRequest, generation: Generation) -> None:
    """A prompt with one of the user's subject tokens but no subject chosen draws whatever the base
    makes of the token: say so, with a link that attaches the subject (issue 18)."""
    if generation.subject_id:
        return
    tagged = {entry.get("id") for entry in generation.loras or () if entry.get("kind") == "subject"}  # <lora:token:w>
    for subject in usable_subjects(request.user).exclude(pk__in=tagged):
        if mentions_token(generation.prompt, subject.token):
            url = f"{reverse('generation-new')}?again={generation.pk}&subject={subject.pk}"
            messages.info(request, format_html(
                "Your prompt names “{}”, the token of your subject {}, but no subject was chosen, so the base model "
                "draws its own idea of it. <a href=\"{}\">Generate again with {}</a>.", subject.token, subject.name, url, subject.name))
            return


def _initial_from_query(request: HttpRequest) -> dict:
    """?source_image=<image> starts from one of the user's images (its settings and seed, one image,
    the size following the input; &upscale=2 and &inpaint=1 are read by the caller and the page);
    ?again=<generation> fills the form with its settings (with &image=<image>: that image's seed
    and one image); ?subject=<subject> preselects a subject (and the base it was trained on) and
    starts the prompt with its token; ?model=<base model> preselects a base model. Only the user's
    own rows count. A source whose subject was deleted says so: the form cannot bring it back."""
    if request.GET.get("source_image", "").isdigit():
        image = GeneratedImage.objects.for_user(request.user).filter(pk=request.GET["source_image"]).select_related("generation").first()
        if image is None:
            return {}
        return {**initial_from_job(image.generation, image), "source_image": image.pk, "input_job": None,
                "width": None, "height": None, "hires_scale": 1.0}
    if request.GET.get("again", "").isdigit():
        source = Generation.objects.for_user(request.user).filter(pk=request.GET["again"]).first()
        if source is None:
            return {}
        image = source.images.filter(pk=request.GET["image"]).first() if request.GET.get("image", "").isdigit() else None
        if source.subject_deleted:
            messages.warning(request, f"The subject “{source.subject_name}” of that generation was deleted, so these settings "
                                      "have no subject: its token in the prompt now draws whatever the base model makes of it.")
        initial = initial_from_job(source, image)
        attach = request.GET.get("subject", "")
        if attach.isdigit() and (subject := usable_subjects(request.user).filter(pk=attach).first()):
            initial["subject"] = subject  # "Generate again with <subject>" from the hint below
        return initial
    if request.GET.get("subject", "").isdigit():
        subject = subjects_of(request.user).filter(pk=request.GET["subject"]).first()
        if subject is None:
            return {}
        run = subject.trained_run()
        return {"subject": subject, "prompt": f"{subject.prompt_example} ", "base_model": run.base_model_id if run else None}
    if request.GET.get("model", "").isdigit():
        return {"base_model": int(request.GET["model"])}
    return {}


@login_required
@require_GET
def generation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    template = "generation/_job_status.html" if request.htmx else "generation/detail.html"
    # ?studio=1: the panel polled from the Generate page, whose Cancel leads back there
    response = render(request, template, {"generation": generation, "images": generation.images.order_by("index"), "studio": request.GET.get("studio") == "1"})
    if request.htmx and not generation.is_active:
        response["HX-Trigger"] = "job-ended"  # the page's Recent list refreshes at once
    return response


@login_required
@require_GET
def generation_preview(request: HttpRequest, pk: int) -> HttpResponse:
    return preview_response(_get_generation_for_user(request, pk))


def preview_response(generation: Generation) -> HttpResponse:
    """The running job's live preview (the caller checked the owner), never cached; 404 when it has none."""
    image = generation.live_preview()
    if image is None:
        raise Http404("No preview: the job has not reached its first one, or it has ended.")
    response = HttpResponse(image, content_type="image/jpeg")
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_GET
def generation_input(request: HttpRequest, pk: int) -> HttpResponse:
    """The job's input image (img2img/inpainting), private to its owner; 404 when it had none."""
    return input_response(_get_generation_for_user(request, pk).init_image, "This job had no input image.")


@login_required
@require_GET
def generation_mask(request: HttpRequest, pk: int) -> HttpResponse:
    return input_response(_get_generation_for_user(request, pk).mask, "This job had no mask.")


def input_response(field_file, missing: str) -> HttpResponse:
    """A job's stored input or mask (the caller checked the owner), with the type of its bytes; 404 `missing` without one."""
    if not field_file:
        raise Http404(missing)
    return private_file_response(field_file, content_type=stored_content_type(field_file))


def _back(request: HttpRequest, generation: Generation) -> HttpResponse:
    """After a job's button: the Generate page showing it when pressed there (next=studio), else its own page."""
    return redirect(studio_url(generation) if request.POST.get("next") == "studio" else generation.get_absolute_url())


@login_required
@require_POST
def generation_retry(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    retry_from_page(request, generation)
    return _back(request, generation)


@login_required
@require_POST
def generation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    if generation.cancel():
        messages.info(request, generation.cancel_notice())
    return _back(request, generation)


@login_required
@require_POST
def generation_delete(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    generation.cancel()  # a running worker sees the row gone or canceled and removes its files
    generation.delete()
    messages.info(request, "Deleted the generation and its images.")
    return redirect("gallery")


@login_required
@require_GET
def gallery(request: HttpRequest) -> HttpResponse:
    filters = GalleryFilterForm(request.GET, owner=request.user)
    filters.is_valid()  # a bad field is shown with its error and left out of the filter
    query = filters.cleaned_data.get("q", "")
    images = filter_by_words(GeneratedImage.objects.for_user(request.user), query, field="generation__prompt")
    images = filter_images(images, **filters.service_filters()).select_related("generation")
    if filters.cleaned_data.get("favourites"):
        images = images.filter(favourite=True)
    page = gallery_page(images, request.GET, size=GALLERY_PAGE_SIZE)  # keyset pages: no OFFSET, no COUNT
    return render(request, "generation/gallery.html", {"page": page, "filters": filters, "query": query,
                                                       "favourites": filters.cleaned_data.get("favourites")})


@login_required
@require_GET
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    return render(request, "generation/image_detail.html", {"image": image, "generation": image.generation})


@login_required
@require_GET
def image_file(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    name = image.download_name() if request.GET.get("download") else None
    return private_file_response(image.file, download_name=name)


@login_required
@require_GET
def image_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    return private_file_response(_get_image_for_user(request, pk).thumbnail)


@login_required
@require_POST
def image_favourite(request: HttpRequest, pk: int) -> HttpResponse:
    """favourite=1 marks the image, favourite=0 unmarks it (the page's star button sends the other state)."""
    image = _get_image_for_user(request, pk)
    if request.POST.get("favourite") not in ("0", "1"):
        return HttpResponseBadRequest("Send favourite=1 to mark the image or favourite=0 to unmark it.", content_type="text/plain")
    image.favourite = request.POST["favourite"] == "1"
    image.save(update_fields=["favourite"])
    return redirect(image)


@login_required
@require_POST
def image_delete(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    image.delete()
    messages.info(request, "Deleted the image.")
    return redirect("gallery")
