"""`/metrics` for operators, in Prometheus' text format (prometheus-client): the queue and its jobs,
read from the job rows at each scrape (the rows are the truth on every machine of a scale-out, so one
scrape of any web process sees the whole site).

Closed to the public by default: a staff session, or `Authorization: Bearer <IMAGESITE_METRICS_TOKEN>`
for a Prometheus server (no token set: staff only).
"""
from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .jobs import ACTIVE_STATUSES, JobStatus, job_models


class JobCollector:
    """Per job kind (generation, trainingrun) and its cluster: jobs by status, how long finished jobs
    took, failures, and the GPU-seconds jobs used (imagesite.runner counts them from the moment the
    job holds the GPU: not its wait for the lease, not a model load)."""

    def collect(self):
        queued = GaugeMetricFamily("imagesite_jobs_queued", "Jobs waiting in the queue.", labels=["kind", "cluster"])
        running = GaugeMetricFamily("imagesite_jobs_running", "Jobs running now.", labels=["kind", "cluster"])
        finished = CounterMetricFamily("imagesite_jobs_finished", "Jobs that ended, by outcome.", labels=["kind", "status"])
        seconds = CounterMetricFamily("imagesite_job_run_seconds", "Seconds finished jobs ran (start to end), by outcome.",
                                      labels=["kind", "status"])
        oldest = GaugeMetricFamily("imagesite_queue_oldest_wait_seconds", "How long the oldest queued job has waited.",
                                   labels=["kind", "cluster"])
        gpu = CounterMetricFamily("imagesite_job_gpu_seconds", "GPU-seconds jobs used (each job its share of a batch), by status.",
                                  labels=["kind", "cluster", "status"])
        from django.utils import timezone

        now = timezone.now()
        for model in job_models():
            kind, cluster = model._meta.model_name, model.cluster or "default"
            rows = model.objects.order_by().values("status").annotate(n=Count("pk"), gpu=Sum("gpu_seconds"))
            by_status = {row["status"]: row["n"] for row in rows}
            used = {row["status"]: row["gpu"] or 0.0 for row in rows}
            queued.add_metric([kind, cluster], by_status.get(JobStatus.QUEUED, 0))
            running.add_metric([kind, cluster], by_status.get(JobStatus.RUNNING, 0))
            first = model.objects.filter(status=JobStatus.QUEUED).order_by("created_at").values_list("created_at", flat=True).first()
            oldest.add_metric([kind, cluster], (now - first).total_seconds() if first else 0.0)
            took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
            durations = dict(
                model.objects.exclude(status__in=ACTIVE_STATUSES).filter(started_at__isnull=False, finished_at__isnull=False)
                .order_by().values("status").annotate(total=Sum(took)).values_list("status", "total")
            )
            for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
                finished.add_metric([kind, status], by_status.get(status, 0))
                seconds.add_metric([kind, status], _seconds(durations.get(status)))
            for status in JobStatus.values:  # running and requeued jobs have used some too
                gpu.add_metric([kind, cluster, status], float(used.get(status, 0.0)))
        yield from (queued, running, oldest, finished, seconds, gpu)


def _seconds(value) -> float:
    if value is None:
        return 0.0
    return value.total_seconds() if isinstance(value, timedelta) else float(value) / 1e6


def _allowed(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = getattr(settings, "IMAGESITE_METRICS_TOKEN", "")
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse("Metrics are for staff, or a scraper with IMAGESITE_METRICS_TOKEN.\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
