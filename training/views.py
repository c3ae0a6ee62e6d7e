from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from generation.modelinfo import describe_model
from imagesite.files import private_download, private_file_response
from imagesite.job_pages import retry_from_page
from imagesite.quotas import QuotaExceeded

from . import services
from .checkpoint_names import named_for_tools
from .forms import CaptionsForm, PhotoUploadForm, SubjectForm, TrainingForm
from .models import PhotoStatus, Subject, SubjectPhoto, TrainingRun


def _get_subject_for_user(request: HttpRequest, pk: int) -> Subject:
    return get_object_or_404(Subject.objects.for_user(request.user), pk=pk)


def _get_photo_for_user(request: HttpRequest, subject_pk: int, pk: int) -> SubjectPhoto:
    return get_object_or_404(SubjectPhoto.objects.for_user(request.user).filter(subject_id=subject_pk), pk=pk)


def _get_run_for_user(request: HttpRequest, pk: int) -> TrainingRun:
    return get_object_or_404(TrainingRun.objects.for_user(request.user).select_related("subject"), pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def subject_list(request: HttpRequest) -> HttpResponse:
    form = SubjectForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            subject = services.create_subject(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.info(request, f"Created {subject.name}. Now upload 3-30 photos of it.")
            return redirect(subject)
    kept = Count("photos", filter=~Q(photos__status=PhotoStatus.REJECTED))  # ready or being checked
    subjects = Subject.objects.for_user(request.user).annotate(photo_count=kept).prefetch_related("runs")
    return render(request, "training/subjects.html", {"form": form, "subjects": subjects})


def _subject_page(request: HttpRequest, subject: Subject, *, training_form=None, captions_form=None, status: int = 200) -> HttpResponse:
    photos = list(subject.photos.all())
    ready = [photo for photo in photos if photo.is_ready]
    captions_form = captions_form or CaptionsForm(subject=subject, photos=ready)
    fields = {photo.pk: field for photo, field in captions_form.rows()}
    context = {
        "subject": subject,
        "tiles": [(photo, fields.get(photo.pk)) for photo in photos],
        "ready_count": len(ready),
        "pending_count": sum(photo.status == PhotoStatus.PENDING for photo in photos),
        "captions_form": captions_form,
        "is_training": subject.is_training(),
        "caption_backgrounds": describe_model(settings.IMAGESITE_MODEL).caption_backgrounds,
    }
    if request.htmx:
        # htmx polls the photo list every 2 s while photos are being processed: the list alone, without
        # the Train form (the catalog, each base's files and the method defaults) or the runs.
        return render(request, "training/_photos.html", context, status=status)
    context.update(runs=subject.runs.all()[:10], latest_run=subject.latest_run(), upload_form=PhotoUploadForm(),
                   training_form=training_form or TrainingForm())
    return render(request, "training/subject_detail.html", context, status=status)


@login_required
@require_GET
def subject_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _subject_page(request, _get_subject_for_user(request, pk))


@login_required
@require_POST
def photo_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Always answered with a redirect to the subject (post/redirect/get): reloading the page after an
    upload must not send the files again, and a file input cannot be refilled anyway. Every outcome,
    refusals included, reaches the page as a message."""
    subject = _get_subject_for_user(request, pk)
    form = PhotoUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        for error in form.errors.get("photos", form.non_field_errors()):
            messages.error(request, error)
        return redirect(subject)
    try:
        outcome = services.add_photos(subject=subject, files=form.cleaned_data["photos"])
    except QuotaExceeded as exc:
        messages.error(request, exc.message)
        return redirect(subject)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect(subject)
    if outcome.accepted:
        count = len(outcome.accepted)
        messages.info(request, f"Received {count} photo{pluralize(count)}; {'they are' if count != 1 else 'it is'} being checked.")
    for name in form.duplicates:
        messages.warning(request, f"{name}: already uploaded (the same file is in this upload twice); skipped.")
    for name, reason in outcome.rejected:
        messages.error(request, f"{name}: {reason}")
    return redirect(subject)


@login_required
@require_POST
def photo_captions(request: HttpRequest, pk: int) -> HttpResponse:
    subject = _get_subject_for_user(request, pk)
    form = CaptionsForm(request.POST, subject=subject, photos=subject.photos.ready())
    if form.is_valid():
        try:
            services.set_captions(subject=subject, captions=form.captions())
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                form.add_service_errors(exc.message_dict)
            else:
                form.add_error(None, exc)
    if not form.is_valid():
        return _subject_page(request, subject, captions_form=form, status=400)
    messages.info(request, "Saved the captions.")
    return redirect(subject)


@login_required
@require_POST
def photo_delete(request: HttpRequest, pk: int, photo_pk: int) -> HttpResponse:
    photo = _get_photo_for_user(request, pk, photo_pk)
    try:
        services.remove_photo(photo=photo)
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    return redirect(photo.subject)


@login_required
@require_GET
def photo_crop(request: HttpRequest, pk: int, photo_pk: int) -> HttpResponse:
    photo = _get_photo_for_user(request, pk, photo_pk)
    if not photo.crop:
        raise Http404("This photo has no crop (yet).")
    return private_file_response(photo.crop)


@login_required
@require_POST
def training_start(request: HttpRequest, pk: int) -> HttpResponse:
    subject = _get_subject_for_user(request, pk)
    form = TrainingForm(request.POST)
    if not form.is_valid():
        return _subject_page(request, subject, training_form=form, status=400)
    try:
        run = services.start_training(
            subject=subject, method=form.cleaned_data["method"], options=form.options(),
            base_model=form.cleaned_data.get("base_model"),
        )
    except QuotaExceeded as exc:
        form.add_error(None, exc.message)
        return _subject_page(request, subject, training_form=form, status=429)
    except ValidationError as exc:
        form.add_error(None, exc)
        return _subject_page(request, subject, training_form=form, status=400)
    return redirect(run)


@login_required
@require_POST
def subject_delete(request: HttpRequest, pk: int) -> HttpResponse:
    subject = _get_subject_for_user(request, pk)
    services.delete_subject(subject=subject)
    messages.info(request, f"Deleted {subject.name}, its photos and checkpoints. Images made with it stay in your gallery.")
    return redirect("subject-list")


@login_required
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    template = "training/_run_status.html" if request.htmx else "training/run_detail.html"
    validation = run.validation_generations.prefetch_related("images").order_by("created_at")
    return render(request, template, {"run": run, "subject": run.subject, "validation": validation})


@login_required
@require_POST
def run_retry(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    retry_from_page(request, run)
    return redirect(run)


@login_required
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    if run.cancel():
        messages.info(request, run.cancel_notice())
    return redirect(run)


@login_required
@require_GET
def run_checkpoint(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    return private_download(named_for_tools(run.checkpoint_file(), run.subject.token), "This run has no checkpoint.")


@login_required
@require_GET
def run_token_embedding(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run_for_user(request, pk)
    return private_download(named_for_tools(run.token_embedding_file(), run.subject.token), "This run learnt no token embedding.")
