"""Webhook addresses: every address a URL resolves to must be globally routable, IPv6 forms that carry
an IPv4 address included, when the URL is saved and again on the address each delivery connects to."""
from __future__ import annotations

import socket

import pytest
from django.core.exceptions import ValidationError

from api import webhooks
from api.models import DeliveryStatus, WebhookDelivery

pytestmark = pytest.mark.django_db

BLOCKED = [
    # IPv6 forms that passed before
    "::7f00:1",          # IPv4-compatible 127.0.0.1
    "fec0::1",           # site-local
    "64:ff9b::7f00:1",   # NAT64 well-known prefix, carries 127.0.0.1
    "2002:7f00:1::",     # 6to4, carries 127.0.0.1
    # more IPv6
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",  # IPv4-mapped
    "64:ff9b::a00:1",    # NAT64 to 10.0.0.1
    "64:ff9b:1::808:808",  # NAT64 local-use prefix
    "2002:c0a8:101::",   # 6to4 to 192.168.1.1
    "2001:0:7f00:1::7f00:1",  # Teredo, server 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45 (documentation)
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1", "100::1", "3fff::1",
    # IPv4
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.0.8", "192.88.99.1", "198.18.0.1", "192.0.2.1",
]
ROUTABLE = [
    "8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",                       # IPv4-mapped, public
]
# Translated forms carrying a public IPv4 address: routable, but the connect-time filter refuses every
# one of them, so they are refused when saved rather than accepted and never delivered.
TRANSLATED = [
    "64:ff9b::808:808",                     # NAT64 to 8.8.8.8
    "2002:808:808::1",                      # 6to4 to 8.8.8.8
    "2001:0:4136:e378:8000:0:f7f7:f7f7",    # Teredo: server 65.54.227.120, client 8.8.8.8
]


def _url(address: str) -> str:
    return f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook"


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses_are_refused_when_saved(address, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert webhooks._blocked_address(address)
    with pytest.raises(ValidationError, match="loopback, private or link-local"):
        webhooks.check_webhook_url(_url(address))


@pytest.mark.parametrize("address", TRANSLATED)
def test_translated_forms_are_refused_when_saved_as_at_connect_time(address, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert webhooks._blocked_address(address)


@pytest.mark.parametrize("address", ROUTABLE)
def test_globally_routable_addresses_are_accepted(address, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert not webhooks._blocked_address(address)
    assert webhooks.check_webhook_url(_url(address)) == _url(address)


def test_scoped_link_local_is_refused():
    assert webhooks._blocked_address("fe80::1%eth0")


# --- at connect time -----------------------------------------------------------------------------
@pytest.fixture
def rebinding_dns(monkeypatch):
    """A name that answers a public address first and then `answers` in turn: DNS rebinding. The
    resolver is patched because no real DNS server answers like this here; both the save-time check
    and requests-hardened's connect-time lookup go through socket.getaddrinfo."""
    answers: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host != "hooks.rebind.test":
            return real_getaddrinfo(host, port, family, type, proto, flags)
        address = answers.pop(0)
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("inside", ["::7f00:1", "fec0::1", "64:ff9b::7f00:1", "2002:7f00:1::", "127.0.0.1"])
def test_connection_refuses_a_name_that_now_resolves_inside(inside, rebinding_dns, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    rebinding_dns.append(inside)
    with webhooks._session() as session, pytest.raises(webhooks.InvalidIPAddress):
        session.post("http://hooks.rebind.test/hook", data=b"{}", timeout=5)
    assert rebinding_dns == []  # the connection looked the name up, and refused the answer


@pytest.mark.parametrize("inside", ["::7f00:1", "fec0::1"])
def test_delivery_that_passed_the_check_is_refused_at_connect(inside, owner, rebinding_dns, settings):
    """requests-hardened's own filter lets these two through; our rule at connect time refuses them."""
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    rebinding_dns.extend(["8.8.8.8", inside])  # the check in deliver() sees 8.8.8.8, the connection `inside`
    delivery = WebhookDelivery.objects.create(owner=owner, event="generation.succeeded", url="http://hooks.rebind.test/hook", payload={})
    assert webhooks.deliver(delivery.pk) == DeliveryStatus.FAILED
    delivery.refresh_from_db()
    assert delivery.attempt_log[0]["error"] == webhooks.PRIVATE_REFUSED and rebinding_dns == []
