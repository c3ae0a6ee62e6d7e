"""Signed webhooks: when a job ends, POST a JSON payload to the job's webhook URL (or the owner's
default), signed with the owner's secret, retried with backoff, every attempt recorded.

Signature (Stripe-like, so receivers can reject replays):
    X-Imagesite-Timestamp: <unix seconds>
    X-Imagesite-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
Receivers recompute the HMAC over the raw body and refuse timestamps older than a few minutes.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.utils import timezone

from requests_hardened import Config as HardenedConfig
from requests_hardened import HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter

from imagesite.jobs import job_finished

from .models import DeliveryStatus, WebhookDelivery, WebhookSettings

log = logging.getLogger("imagesite.webhooks")

SIGNATURE_HEADER = "X-Imagesite-Signature"
TIMESTAMP_HEADER = "X-Imagesite-Timestamp"
EVENT_HEADER = "X-Imagesite-Event"
DELIVERY_HEADER = "X-Imagesite-Delivery"


# --- the URL rule (serializers and pages both call it) ------------------------------------------------
PRIVATE_REFUSED = "Webhook URLs may not point at loopback, private or link-local addresses."

# Not globally routable, though some Python releases' is_global says otherwise (3.11.7: all of them).
_NOT_GLOBAL = tuple(ipaddress.ip_network(net) for net in (
    "192.0.0.0/24",    # IETF protocol assignments
    "192.88.99.0/24",  # 6to4 relay anycast
    "::/96",           # IPv4-compatible (deprecated): ::7f00:1 is 127.0.0.1 on some stacks
    "64:ff9b:1::/48",  # NAT64 for local use: where the IPv4 address sits depends on the network
    "fec0::/10",       # site-local (deprecated, still routed inside some networks)
    "3fff::/20",       # documentation
    "5f00::/16",       # segment routing
))
# NAT64's well-known prefix: the last 32 bits are the IPv4 address the translator connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _destinations(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a packet to `ip` ends up at: IPv6 forms that carry an IPv4 address (mapped, NAT64,
    6to4, Teredo's server and client) reach that IPv4 address, so it is the one judged."""
    if ip.version == 4:
        return [ip]
    if ip.ipv4_mapped:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour:
        return [ip.sixtofour]
    if ip.teredo:
        return list(ip.teredo)
    return [ip]


def _routable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.version == 6 and ip.is_site_local:
        return False
    return not any(ip in net for net in _NOT_GLOBAL if net.version == ip.version)


def _translated(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """NAT64, 6to4 and Teredo addresses: the connect-time filter (requests_hardened) refuses them all,
    whatever they carry, so a URL resolving to one is refused when saved too, not accepted and then
    never delivered."""
    return ip.version == 6 and (ip in _NAT64 or ip.sixtofour is not None or ip.teredo is not None)


def _blocked_address(address: str) -> bool:
    """True unless `address`, and every IPv4 address it carries, is globally routable unicast (and not
    a translated form). Checked when a URL is saved and again on the address each delivery connects to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return _translated(ip) or not all(_routable(destination) for destination in _destinations(ip))


def resolve_host(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return []
    return sorted({info[4][0] for info in infos})


def check_webhook_url(url: str) -> str:
    """Raise ValidationError unless `url` is http(s) and every address its host resolves to is public
    (loopback, private, link-local and reserved are refused unless IMAGESITE_WEBHOOK_ALLOW_PRIVATE)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValidationError("Enter a valid http(s) URL.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Webhook URLs must start with http:// or https:// and name a host.")
    if parts.username or parts.password:
        raise ValidationError("Put no credentials in the webhook URL; check the signature instead.")
    addresses = resolve_host(parts.hostname, port)
    if not addresses:
        raise ValidationError(f"The host {parts.hostname} does not resolve.")
    if not settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE and any(_blocked_address(a) for a in addresses):
        raise ValidationError(PRIVATE_REFUSED)
    return url


# --- signing ---------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: int = 300) -> bool:
    """What a receiver does; kept here for tests and for users' reference."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# Event names: "<kind>.<status>", e.g. "generation.succeeded", "training_run.failed".
EVENT_KINDS = {"generation": "generation", "trainingrun": "training_run"}


# --- queueing on job end -----------------------------------------------------------------------------
# The serializer that shows each job model in payloads, registered by its app (AppConfig.ready), so
# this shared module imports no app above it.
JOB_SERIALIZERS: dict[type, type] = {}


def register_job_serializer(model: type, serializer_class: type) -> None:
    JOB_SERIALIZERS[model] = serializer_class


def job_payload(job) -> dict:
    """The job as the API shows it (links are paths: there is no request here)."""
    kind = EVENT_KINDS.get(job._meta.model_name, job._meta.model_name)
    data = dict(JOB_SERIALIZERS[type(job)](job, context={}).data)
    return {"event": f"{kind}.{job.status}", "created_at": timezone.now().isoformat(), "data": data}


@receiver(job_finished)
def queue_webhook(sender, job, **kwargs) -> WebhookDelivery | None:
    try:
        return _queue_webhook(job)
    except Exception:  # noqa: BLE001 - the job has ended and committed; a webhook problem must not touch it
        log.exception("could not queue the webhook of %s %s", sender.__name__, job.pk)
        return None


def _queue_webhook(job) -> WebhookDelivery | None:
    url = getattr(job, "webhook_url", "") or WebhookSettings.objects.filter(user_id=job.owner_id).values_list("default_url", flat=True).first()
    if not url:
        return None
    payload = job_payload(job)
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(owner_id=job.owner_id, event=payload["event"], url=url, payload=payload)
        transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def _enqueue(delivery_id: int) -> None:
    from django_q.tasks import async_task

    # Always on the generation cluster: a training worker must not hold webhooks behind a long run.
    async_task("api.webhooks.deliver", delivery_id, cluster=settings.Q_CLUSTER["name"], task_name=f"webhook-{delivery_id}")


def _schedule_retry(delivery: WebhookDelivery) -> None:
    from django_q.models import Schedule
    from django_q.tasks import schedule

    try:
        schedule(
            "api.webhooks.deliver",
            delivery.pk,
            schedule_type=Schedule.ONCE,  # deleted by the scheduler once it has run
            next_run=delivery.next_attempt_at,
            name=f"webhook-{delivery.pk}-retry-{delivery.attempts}",
        )
    except IntegrityError:
        pass  # a duplicate run of the same attempt already scheduled this retry


# --- the task ------------------------------------------------------------------------------------
class _PublicAddressAdapter(IPFilterAdapter):
    """requests-hardened's adapter resolves the host once, refuses the private ranges it knows and pins
    the connection to that address; our rule (_blocked_address) then judges the pinned address too."""

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        pinned = host_params["host"].strip("[]")
        if _blocked_address(pinned):
            log.warning("webhook to %s refused at connect time: %s", request.url, pinned)
            raise InvalidIPAddress(pinned)
        return host_params, pool_kwargs


def _session() -> requests.Session:
    """A session that connects to the address it checked (pinned, and checked again at connect time),
    so a DNS answer that changes between check_webhook_url and the connection (DNS rebinding) cannot
    reach the server's own network. Never follows redirects."""
    if settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE:
        return requests.Session()
    # The timeout and no-redirects are given per request (below), for both kinds of session.
    session = HTTPSession(HardenedConfig(ip_filter_enable=False, ip_filter_allow_loopback_ips=False, never_redirect=True,
                                         default_timeout=None))
    session.mount("http://", _PublicAddressAdapter(is_https_proto=False))
    session.mount("https://", _PublicAddressAdapter(is_https_proto=True))
    return session


def deliver(delivery_id: int) -> str:
    """One attempt: POST, record it, then succeed, schedule the next try with backoff, or give up."""
    delivery = WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING).select_related("owner").first()
    if delivery is None:
        return "nothing to do"
    secret = WebhookSettings.for_user(delivery.owner).secret
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    started = time.monotonic()
    status_code, error, permanent = None, "", False
    try:
        check_webhook_url(delivery.url)  # again: DNS can change between saving and sending
    except ValidationError as exc:
        error, permanent = exc.messages[0], True
    else:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "imagesite-webhooks/1",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: str(delivery.pk),
        }
        try:
            # No redirects: a redirect could point at an address check_webhook_url refuses.
            with _session() as session:
                response = session.post(delivery.url, data=body, headers=headers,
                                        timeout=settings.IMAGESITE_WEBHOOK_TIMEOUT_S, allow_redirects=False)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except InvalidIPAddress:
            error, permanent = PRIVATE_REFUSED, True
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
    return _record_attempt(delivery, status_code, error, permanent, started)


def _record_attempt(delivery: WebhookDelivery, status_code: int | None, error: str, permanent: bool, started: float) -> str:
    now = timezone.now()
    delivery.attempts += 1
    delivery.attempt_log = [
        *delivery.attempt_log,
        {"at": now.isoformat(), "status_code": status_code, "error": error, "duration_ms": round(1000 * (time.monotonic() - started))},
    ]
    backoff = settings.IMAGESITE_WEBHOOK_BACKOFF_S
    if not error:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = DeliveryStatus.SUCCEEDED, now, None
    elif permanent or delivery.attempts > len(backoff):
        delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
    else:
        delivery.next_attempt_at = now + timedelta(seconds=backoff[delivery.attempts - 1])
    delivery.save(update_fields=["attempts", "attempt_log", "status", "delivered_at", "next_attempt_at"])
    if delivery.status == DeliveryStatus.PENDING:
        _schedule_retry(delivery)
        return f"retry at {delivery.next_attempt_at.isoformat()}"
    return delivery.status
