"""Webhooks: queued when a job ends, signed, retried with backoff, attempts visible, SSRF refused."""
from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from django.core.exceptions import ValidationError
from django_q.models import OrmQ, Schedule

from api import webhooks
from api.models import DeliveryStatus, WebhookDelivery, WebhookSettings
from generation.models import Generation

from .api_support import anon_api, assert_error, other_api, owner_api, receiver  # noqa: F401  (fixtures)
from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db


def _finish(generation: Generation, django_capture_on_commit_callbacks) -> WebhookDelivery:
    """End the job the way the worker does and run the after-commit hooks (signal, then queueing)."""
    with django_capture_on_commit_callbacks(execute=True):
        Generation.objects.filter(pk=generation.pk).update(status="running")
        generation.refresh_from_db()
        assert generation.succeed()
    return WebhookDelivery.objects.get()


def test_a_finished_job_queues_a_signed_delivery(owner, receiver, django_capture_on_commit_callbacks):
    generation = make_generation(owner, webhook_url=receiver.url)
    make_image(owner, generation=generation)
    delivery = _finish(generation, django_capture_on_commit_callbacks)
    assert delivery.event == "generation.succeeded" and delivery.url == receiver.url
    assert OrmQ.objects.count() == 1  # the task that will POST it

    assert webhooks.deliver(delivery.pk) == "succeeded"
    (request,) = receiver.received
    secret = WebhookSettings.for_user(owner).secret
    headers = request["headers"]
    assert webhooks.verify(secret, headers["X-Imagesite-Timestamp"], request["body"], headers["X-Imagesite-Signature"])
    assert not webhooks.verify("wrong", headers["X-Imagesite-Timestamp"], request["body"], headers["X-Imagesite-Signature"])
    payload = json.loads(request["body"])
    assert payload["event"] == "generation.succeeded" and payload["data"]["id"] == generation.pk
    assert payload["data"]["images"][0]["file_url"].startswith("/api/v1/images/")
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempt_log[0]["status_code"] == 200


def test_signature_covers_the_timestamp():
    body = b'{"a":1}'
    now = int(time.time())
    signature = webhooks.sign("s3cret", now, body)
    assert webhooks.verify("s3cret", str(now), body, signature)
    assert not webhooks.verify("s3cret", str(now + 1), body, signature)
    assert not webhooks.verify("s3cret", str(now - 3600), body, webhooks.sign("s3cret", now - 3600, body))  # replay


def test_the_users_default_url_is_used_when_the_job_names_none(owner, receiver, django_capture_on_commit_callbacks):
    hooks = WebhookSettings.for_user(owner)
    hooks.default_url = receiver.url
    hooks.save()
    assert _finish(make_generation(owner), django_capture_on_commit_callbacks).url == receiver.url


def test_no_url_no_delivery(owner, django_capture_on_commit_callbacks):
    generation = make_generation(owner, status="running")
    with django_capture_on_commit_callbacks(execute=True):
        generation.cancel()
    assert not WebhookDelivery.objects.exists()


def test_failures_are_retried_with_backoff_then_given_up(owner, receiver, settings, django_capture_on_commit_callbacks):
    settings.IMAGESITE_WEBHOOK_BACKOFF_S = [30, 120]
    receiver.codes = [500, 503, 500]
    delivery = _finish(make_generation(owner, webhook_url=receiver.url), django_capture_on_commit_callbacks)
    retries = Schedule.objects.filter(func="api.webhooks.deliver")

    assert webhooks.deliver(delivery.pk).startswith("retry")
    delivery.refresh_from_db()
    first_retry = retries.get()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1
    attempted_at = datetime.fromisoformat(delivery.attempt_log[0]["at"])
    assert first_retry.next_run == delivery.next_attempt_at and (delivery.next_attempt_at - attempted_at).total_seconds() == 30
    assert first_retry.func == "api.webhooks.deliver" and first_retry.args == f"({delivery.pk},)"

    webhooks.deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and retries.count() == 2
    assert webhooks.deliver(delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and [a["status_code"] for a in delivery.attempt_log] == [500, 503, 500]
    assert delivery.attempt_log[0]["error"] == "HTTP 500"
    assert webhooks.deliver(delivery.pk) == "nothing to do"  # a stray redelivery does not POST again
    assert len(receiver.received) == 3


def test_a_delivery_that_recovers_succeeds(owner, receiver, django_capture_on_commit_callbacks):
    receiver.codes = [502, 204]
    delivery = _finish(make_generation(owner, webhook_url=receiver.url), django_capture_on_commit_callbacks)
    webhooks.deliver(delivery.pk)
    assert webhooks.deliver(delivery.pk) == "succeeded"


def test_an_unreachable_receiver_is_recorded(owner, settings, django_capture_on_commit_callbacks):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = True
    delivery = _finish(make_generation(owner, webhook_url="http://127.0.0.1:9/closed"), django_capture_on_commit_callbacks)
    webhooks.deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.attempt_log[0]["status_code"] is None and "ConnectionError" in delivery.attempt_log[0]["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook", "http://localhost:8000/", "http://10.0.0.5/", "http://192.168.1.1/",
        "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/",
    ],
)
def test_private_addresses_are_refused(url, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError, match="loopback, private or link-local"):
        webhooks.check_webhook_url(url)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)", "http://", "http://user:pw@8.8.8.8/", "http://no-such-host.invalid/"])
def test_other_bad_urls_are_refused(url):
    with pytest.raises(ValidationError):
        webhooks.check_webhook_url(url)


def test_public_address_is_accepted(settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert webhooks.check_webhook_url("https://8.8.8.8/hook") == "https://8.8.8.8/hook"


def test_a_url_that_turned_private_is_refused_at_delivery(owner, settings, django_capture_on_commit_callbacks):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = True
    delivery = _finish(make_generation(owner, webhook_url="http://127.0.0.1:9/x"), django_capture_on_commit_callbacks)
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False  # e.g. DNS now points inside
    assert webhooks.deliver(delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert "private" in delivery.attempt_log[0]["error"]
    assert not Schedule.objects.filter(func="api.webhooks.deliver").exists()


def test_the_connection_itself_refuses_a_private_address(owner, receiver, settings, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    """DNS rebinding: the name passed the check, then resolves inside when the POST connects.
    Simulated by skipping the check; the pinned, filtering session must still refuse 127.0.0.1."""
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = True
    delivery = _finish(make_generation(owner, webhook_url=receiver.url), django_capture_on_commit_callbacks)
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(webhooks, "check_webhook_url", lambda url: url)
    assert webhooks.deliver(delivery.pk) == "failed"
    assert receiver.received == []
    delivery.refresh_from_db()
    assert "private" in delivery.attempt_log[0]["error"]


# --- the API side: deliveries and the secret ---------------------------------------------------
def test_deliveries_are_listed_with_attempts(owner, receiver, owner_api, other_api, django_capture_on_commit_callbacks):
    delivery = _finish(make_generation(owner, webhook_url=receiver.url), django_capture_on_commit_callbacks)
    webhooks.deliver(delivery.pk)
    body = owner_api.get("/api/v1/webhook-deliveries/").json()
    item = body["results"][0]
    assert item["id"] == delivery.pk and item["status"] == "succeeded" and item["target_url"] == receiver.url
    assert item["attempt_log"][0]["status_code"] == 200
    assert owner_api.get(item["url"]).json()["payload"]["event"] == "generation.succeeded"
    assert other_api.get("/api/v1/webhook-deliveries/").json()["count"] == 0
    assert_error(other_api.get(f"/api/v1/webhook-deliveries/{delivery.pk}/"), 404)


def test_webhook_endpoints_need_auth_and_methods(anon_api, owner_api):
    for url in ("/api/v1/webhook-deliveries/", "/api/v1/webhook-deliveries/1/", "/api/v1/me/webhook-secret/"):
        assert_error(anon_api.get(url), 401)
    assert_error(owner_api.post("/api/v1/webhook-deliveries/"), 405)
    assert_error(owner_api.delete("/api/v1/me/webhook-secret/"), 405)


def test_secret_can_be_read_and_rotated(owner, owner_api):
    old = owner_api.get("/api/v1/me/webhook-secret/").json()
    assert old["secret"] == WebhookSettings.for_user(owner).secret and old["signature_header"] == "X-Imagesite-Signature"
    new = owner_api.post("/api/v1/me/webhook-secret/").json()["secret"]
    assert new != old["secret"] and WebhookSettings.for_user(owner).secret == new


def test_generation_webhook_url_is_checked_and_stored(owner_api, receiver):
    body = owner_api.post("/api/v1/generations/", {"prompt": "a circle", "webhook_url": receiver.url}, format="json").json()
    assert body["webhook_url"] == receiver.url


def test_account_page_lists_deliveries_with_their_last_error(owner, owner_client, settings, django_capture_on_commit_callbacks):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = True
    delivery = _finish(make_generation(owner, webhook_url="http://127.0.0.1:9/closed"), django_capture_on_commit_callbacks)
    webhooks.deliver(delivery.pk)
    page = owner_client.get("/accounts/api/").content.decode()
    assert "generation.succeeded" in page and "1 attempt" in page and "ConnectionError" in page
