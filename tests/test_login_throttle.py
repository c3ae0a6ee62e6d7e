"""Login throttling (django-axes): wrong passwords lock the account and the address for a cool-off,
on the site's login page and the admin's, and a lock-out ends by itself."""
from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.db.models import F
from django.test import Client, RequestFactory
from django.urls import reverse

from imagesite.login_throttle import client_ip

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


def _client(address: str = "203.0.113.10", **headers: str) -> Client:
    return Client(REMOTE_ADDR=address, **headers)


def _log_in(client: Client, username: str, password: str, url: str = LOGIN):
    return client.post(url, {"username": username, "password": password})


def _fail(client: Client, username: str, times: int, url: str = LOGIN) -> list[int]:
    return [_log_in(client, username, "wrong-password", url).status_code for _ in range(times)]


def _wait_out_cool_off(settings) -> None:
    # Time travel for the stored failures: age them past the cool-off instead of sleeping 15 minutes.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))


def _is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_fifth_wrong_password_locks_and_the_right_one_is_refused(owner, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    client = _client()
    assert _fail(client, "owner", 5) == [200, 200, 200, 200, 429]
    response = _log_in(client, "owner", PASSWORD)
    assert response.status_code == 429 and not _is_logged_in(client)
    page = response.content.decode()
    assert "Too many failed log-ins" in page and "Try again in 15 minutes" in page
    assert '<a class="brand"' in page  # the site's layout, not a bare message


def test_lock_out_ends_by_itself_after_the_cool_off(owner, settings):
    client = _client()
    _fail(client, "owner", 5)
    _wait_out_cool_off(settings)
    response = _log_in(client, "owner", PASSWORD)
    assert response.status_code == 302 and _is_logged_in(client)


def test_cool_off_is_tunable(owner, settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=2)
    client = _client()
    _fail(client, "owner", 5)
    assert "Try again in 2 minutes" in _log_in(client, "owner", PASSWORD).content.decode()


def test_locked_address_refuses_other_accounts_too(owner, other_user):
    attacker = _client("203.0.113.10")
    _fail(attacker, "owner", 5)
    assert _log_in(attacker, "other", PASSWORD).status_code == 429
    # Someone else, from another address, logs in to the other account as usual.
    assert _log_in(_client("198.51.100.20"), "other", PASSWORD).status_code == 302


def test_guesses_spread_over_accounts_lock_the_address(owner, other_user):
    attacker = _client("203.0.113.10")
    statuses = [_log_in(attacker, name, "wrong-password").status_code for name in ["a", "b", "c", "d", "e"]]
    assert statuses == [200, 200, 200, 200, 429]
    assert _log_in(attacker, "owner", PASSWORD).status_code == 429


def test_locked_account_is_refused_from_another_address(owner):
    _fail(_client("203.0.113.10"), "owner", 5)
    assert _log_in(_client("198.51.100.20"), "owner", PASSWORD).status_code == 429


def test_admin_login_is_throttled(django_user_model):
    django_user_model.objects.create_superuser("admin", password=PASSWORD)
    client = _client()
    assert _fail(client, "admin", 5, ADMIN_LOGIN) == [200, 200, 200, 200, 429]
    response = _log_in(client, "admin", PASSWORD, ADMIN_LOGIN)
    assert response.status_code == 429 and "Too many failed log-ins" in response.content.decode()
    assert not _is_logged_in(client)


def test_successful_login_resets_the_account_count(owner):
    client = _client()
    _fail(client, "owner", 4)
    assert _log_in(client, "owner", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    assert _fail(client, "owner", 4) == [200] * 4
    assert _log_in(client, "owner", PASSWORD).status_code == 302


def test_own_login_does_not_clear_the_address_count(owner):
    # Someone guessing at other accounts cannot reset the address's count by logging in to their own.
    attacker = _client()
    assert [_log_in(attacker, name, "wrong-password").status_code for name in ["a", "b", "c", "d"]] == [200] * 4
    assert _log_in(attacker, "owner", PASSWORD).status_code == 302
    attacker.post(reverse("logout"))
    assert _log_in(attacker, "e", "wrong-password").status_code == 429


def test_behind_a_proxy_the_appended_forwarded_address_counts(owner, other_user, settings):
    settings.IMAGESITE_PROXY_COUNT = 1
    # Both reach Django from the proxy's address; the left entry is whatever the client sent.
    attacker = _client("10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.20, 203.0.113.10")
    _fail(attacker, "owner", 5)
    assert AccessAttempt.objects.get().ip_address == "203.0.113.10"
    neighbour = _client("10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.20")
    assert _log_in(neighbour, "other", PASSWORD).status_code == 302


@pytest.mark.parametrize(("proxies", "forwarded", "expected"), [
    (0, "", "10.0.0.2"),
    (0, "198.51.100.20", "10.0.0.2"),  # no proxy configured: the header is the client's word, ignored
    (1, "198.51.100.20", "198.51.100.20"),
    (1, "6.6.6.6, 198.51.100.20", "198.51.100.20"),
    (2, "6.6.6.6, 198.51.100.20, 10.0.0.9", "198.51.100.20"),
    (2, "198.51.100.20", "10.0.0.2"),  # fewer entries than proxies: misconfigured, use the peer
])
def test_client_ip(settings, proxies, forwarded, expected):
    settings.IMAGESITE_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_test_client_logins_still_work(client, owner):
    # Client.login() calls authenticate() without a request; there is no client address to throttle.
    assert client.login(username="owner", password=PASSWORD)
    assert not Client().login(username="owner", password="wrong-password")
