from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .forms import GenerateForm
from .models import GeneratedImage, Generation
from .services import create_generation

GALLERY_PAGE_SIZE = 24


def _get_generation_for_user(request: HttpRequest, pk: int) -> Generation:
    return get_object_or_404(Generation.objects.for_user(request.user), pk=pk)


def _get_image_for_user(request: HttpRequest, pk: int) -> GeneratedImage:
    return get_object_or_404(GeneratedImage.objects.for_user(request.user).select_related("generation"), pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = GenerateForm(request.POST)
        if form.is_valid():
            generation = create_generation(owner=request.user, **form.cleaned_data)
            return redirect(generation)
    else:
        initial = {}
        if "again" in request.GET:  # "generate again with these settings"
            source = Generation.objects.for_user(request.user).filter(pk=request.GET.get("again")).first()
            initial = source.form_initial() if source else {}
        form = GenerateForm(initial=initial)
    recent = Generation.objects.for_user(request.user).prefetch_related("images")[:6]
    return render(request, "generation/generate.html", {"form": form, "model": form.model_info, "recent": recent})


@login_required
@require_GET
def generation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    template = "generation/_job_status.html" if request.htmx else "generation/detail.html"
    return render(request, template, {"generation": generation, "images": generation.images.order_by("index")})


@login_required
@require_POST
def generation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    generation = _get_generation_for_user(request, pk)
    if generation.cancel():
        messages.info(request, "Canceled." if generation.started_at is None else "Canceling: it stops at the next step.")
    return redirect(generation)


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
    query = request.GET.get("q", "")
    images = GeneratedImage.objects.for_user(request.user).search(query).select_related("generation")
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "generation/gallery.html", {"page": page, "query": query})


@login_required
@require_GET
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    return render(request, "generation/image_detail.html", {"image": image, "generation": image.generation})


def private_file_response(field_file, *, download_name: str | None = None, content_type: str = "image/png") -> HttpResponse:
    """Serve a private file after the caller checked ownership: through nginx (X-Accel-Redirect)
    when configured, else streamed by Django."""
    disposition = f'attachment; filename="{download_name}"' if download_name else "inline"
    if settings.IMAGESITE_X_ACCEL_REDIRECT:
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = settings.IMAGESITE_X_ACCEL_REDIRECT + field_file.name
        response["Content-Disposition"] = disposition
    else:
        response = FileResponse(field_file.open("rb"), content_type=content_type)
        response["Content-Disposition"] = disposition
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


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
def image_delete(request: HttpRequest, pk: int) -> HttpResponse:
    image = _get_image_for_user(request, pk)
    image.delete()
    messages.info(request, "Deleted the image.")
    return redirect("gallery")
