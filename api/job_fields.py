"""What every job's API shares: where a queued job stands in the queue, and its cancel and retry actions."""
from __future__ import annotations

from functools import cached_property

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from imagesite.conflicts import conflict
from imagesite.jobs import Job, JobStatus
from imagesite.queue import QueueSnapshot, queue_paused, retry_job


class QueuePlaceSerializer(serializers.Serializer):
    ahead = serializers.IntegerField(help_text="Queued jobs that run before this one (round-robin across users).")
    eta_s = serializers.FloatField(allow_null=True, help_text="About how many seconds until it starts; null until a job has finished to estimate from.")
    paused = serializers.CharField(allow_null=True, help_text="Why nothing starts: the operator paused the queue (null when running).")
    text = serializers.CharField(help_text='As the pages say it, e.g. "3 ahead of you, about 40 s".')


class QueuePlaceField(serializers.SerializerMethodField):
    """`queue` on a job: its place while queued, null otherwise. The field lives as long as one
    response, so a list reads the pause and each kind's fair order once, not once per row."""

    def __init__(self, **kwargs) -> None:
        super().__init__(method_name="_queue_place", **kwargs)
        self._queues: dict[type[Job], QueueSnapshot] = {}

    def to_representation(self, job: Job) -> dict | None:
        if job.status != JobStatus.QUEUED:
            return None
        paused = self._paused
        if type(job) not in self._queues:
            self._queues[type(job)] = QueueSnapshot(type(job))
        place = self._queues[type(job)].place(job)
        ahead, eta = (place.ahead, place.eta_s) if place else (0, None)
        text = f"the queue is paused: {paused}" if paused else (place.words() if place else "waiting for the worker")
        return {"ahead": ahead, "eta_s": None if eta is None else round(eta, 1), "paused": paused, "text": text}

    @cached_property
    def _paused(self) -> str | None:
        return queue_paused()


extend_schema_field(QueuePlaceSerializer(allow_null=True))(QueuePlaceField)


def retry(job: Job) -> Job:
    """Queue the owner's failed or canceled job again (imagesite.queue.retry_job: their queue cap, a
    429 past it); 409 for a job that is not failed or canceled."""
    if not retry_job(job):
        raise conflict("Only a failed or canceled job can be retried.")
    job.refresh_from_db()
    return job


# POST …/cancel/ and …/retry/ for a viewset of the owner's jobs (generations, training runs): the job's
# own state changes, answered with the job. Each viewset states their summaries (extend_schema_view),
# since the words differ per kind. A comment, not a docstring: drf-spectacular would publish a
# docstring as every operation's description.
class JobActions:

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        job.cancel()  # no-op once it has ended; the response shows the status either way
        job.refresh_from_db()
        return Response(self.get_serializer(job).data)

    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        return Response(self.get_serializer(retry(self.get_object())).data)
