"""Pages of a user's data export (imagesite.export): prepare it, watch its progress, download it
while its link lasts. The account page loads the section from here."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from .export import archive_response, latest_export, request_export
from .models import DataExport


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def export_data(request: HttpRequest) -> HttpResponse:
    """GET: the export section (alone for htmx, which polls it while the archive is made; else as a
    page). POST: prepare an archive, or find the one being made."""
    if request.method == "POST":
        export, created = request_export(user=request.user)
        if not request.htmx:
            messages.info(request, "Preparing your archive: it appears here when it is ready." if created
                          else "Your archive is already being prepared.")
            return redirect("api-account")  # the account page, where the section lives
    else:
        export = latest_export(request.user)
    context = {"export": export, "hours": settings.IMAGESITE_EXPORT_HOURS}
    return render(request, "account/_export.html" if request.htmx else "account/export.html", context)


@login_required
@require_GET
def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The archive, to its owner only, while its link lasts; otherwise a page that says why not."""
    export = DataExport.objects.for_user(request.user).filter(pk=pk).first()
    if export is None or not export.file:
        # Never made, deleted after it expired, replaced by a newer one, or someone else's: one answer.
        return _gone(request, "No archive of yours here: it expired and was deleted, or a newer archive replaced it.", 404)
    if export.is_expired:
        return _gone(request, f"This archive expired on {export.expires_at:%Y-%m-%d %H:%M} UTC.", 410)
    return archive_response(export)


def _gone(request: HttpRequest, reason: str, status: int) -> HttpResponse:
    return render(request, "account/export_gone.html", {"reason": reason}, status=status)
