"""What the job pages of every kind share: a retry asked for from a page, told as a message."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from .jobs import Job
from .queue import retry_job
from .quotas import QuotaExceeded


def retry_from_page(request: HttpRequest, job: Job) -> None:
    """Queue the owner's failed or canceled job again (imagesite.queue.retry_job, under their
    queue cap) and say how it went."""
    try:
        queued = retry_job(job)
    except QuotaExceeded as refused:
        messages.error(request, refused.message)
        return
    except ValidationError as refused:
        messages.error(request, " ".join(refused.messages))
        return
    if queued:
        messages.info(request, "Queued again.")
