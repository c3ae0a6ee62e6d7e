"""Who may sign up (IMAGESITE_SIGNUP: open, invite, closed), invite links, and password reset by email
(issue 18, "Who may sign up")."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
import requests
from django.contrib.auth.models import User
from django.core import mail
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from imagesite.invites import make_invite
from imagesite.models import Invite

from .concurrency_support import fire_together, statuses

pytestmark = pytest.mark.django_db

SIGNUP, LOGIN, RESET = "/accounts/signup/", "/accounts/login/", "/accounts/password/reset/"
NEW_PASSWORD = "a-long-unique-pass-42"


def _form(username: str) -> dict[str, str]:
    return {"username": username, "email": f"{username}@example.org", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}


@pytest.fixture(autouse=True)
def _fresh_throttle():
    cache.clear()  # the reset throttle counts in the cache, which outlives a test
    yield
    cache.clear()


@pytest.fixture
def invite_mode(settings):
    settings.IMAGESITE_SIGNUP = "invite"
    settings.IMAGESITE_SIGNUP_CONTACT = "ops@example.org"


# --- the three modes --------------------------------------------------------------------------------
def test_open_sign_up_makes_an_account_and_the_login_page_offers_it(client, settings):
    settings.IMAGESITE_SIGNUP = "open"
    login_page = client.get(LOGIN).content.decode()
    assert f'href="{SIGNUP}"' in login_page and "Forgot your password?" in login_page
    response = client.post(SIGNUP, _form("newbie"))
    assert response.status_code == 302 and User.objects.get(username="newbie").email == "newbie@example.org"


def test_closed_sign_up_refuses_and_the_login_page_offers_nothing(client, settings):
    settings.IMAGESITE_SIGNUP = "closed"
    login_page = client.get(LOGIN).content.decode()
    assert f'href="{SIGNUP}"' not in login_page and 'id="signup-note"' not in login_page
    assert "Forgot your password?" in login_page
    for response in (client.get(SIGNUP), client.post(SIGNUP, _form("stranger"))):
        assert response.status_code == 403 and "staff create accounts" in response.content.decode()
    assert not User.objects.exists()


def test_invite_mode_needs_a_link_and_says_whom_to_ask(client, invite_mode):
    login_page = client.get(LOGIN).content.decode()
    assert 'Sign-up is by invitation: ask <a href="mailto:ops@example.org">ops@example.org</a>' in login_page
    assert f'href="{SIGNUP}"' not in login_page
    for response in (client.get(SIGNUP), client.post(SIGNUP, _form("stranger")), client.get(SIGNUP, {"invite": "made-up"})):
        assert response.status_code == 403
    assert not User.objects.exists()


def test_an_invite_makes_one_account_and_is_marked_used(client, invite_mode):
    invite = make_invite(note="for Ada")
    url = f"{SIGNUP}?invite={invite.code}"
    assert client.get(url).status_code == 200
    assert client.post(url, _form("ada")).status_code == 302
    invite.refresh_from_db()
    assert invite.used_by == User.objects.get(username="ada") and invite.used_at is not None

    client.post(reverse("logout"))
    again = client.post(url, _form("bob"))
    assert again.status_code == 403 and "already been used" in again.content.decode()
    assert not User.objects.filter(username="bob").exists()


def test_an_expired_invite_is_refused_with_its_date(client, invite_mode):
    invite = make_invite(note="late")
    Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    response = client.get(f"{SIGNUP}?invite={invite.code}")
    page = response.content.decode()
    assert response.status_code == 403 and "This invite link expired on" in page and "ask ops@example.org" in page.replace("Ask", "ask")
    assert client.post(f"{SIGNUP}?invite={invite.code}", _form("late")).status_code == 403
    assert not User.objects.exists()


@pytest.mark.django_db(transaction=True)  # the live server's threads must see committed rows
def test_one_invite_used_by_simultaneous_sign_ups_makes_one_account(live_server, invite_mode):
    invite = make_invite(note="shared by mistake")
    url = f"{live_server.url}{SIGNUP}?invite={invite.code}"
    sessions = []
    for i in range(6):  # each browser loads the form first (CSRF cookie and token), then all post at once
        session = requests.Session()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', session.get(url, timeout=60).text).group(1)
        sessions.append((session, {**_form(f"racer{i}"), "csrfmiddlewaretoken": token}))
    answers = fire_together([lambda s=s, data=data: s.post(url, data=data, headers={"Referer": url}, allow_redirects=False, timeout=120)
                             for s, data in sessions])
    assert statuses(answers) == {302: 1, 403: 5}, [a.body for a in answers if a.status not in (302, 403)][:1]
    assert User.objects.filter(username__startswith="racer").count() == 1
    invite.refresh_from_db()
    assert invite.used_by.username.startswith("racer")


# --- the admin ----------------------------------------------------------------------------------------
def test_staff_make_an_invite_in_the_admin_and_see_its_full_link(client, django_user_model, invite_mode):
    staff = django_user_model.objects.create_superuser("boss", password=NEW_PASSWORD)
    client.force_login(staff)
    add = client.get("/admin/imagesite/invite/add/")
    assert add.status_code == 200 and 'name="expires_at_0"' in add.content.decode()
    expires = timezone.localtime(timezone.now() + timedelta(days=3))
    response = client.post("/admin/imagesite/invite/add/", {"note": "for Ada", "expires_at_0": expires.strftime("%Y-%m-%d"), "expires_at_1": expires.strftime("%H:%M:%S")}, follow=True)
    invite = Invite.objects.get()
    assert invite.created_by == staff and invite.note == "for Ada"
    link = f"http://testserver/accounts/signup/?invite={invite.code}"
    assert link in response.content.decode()  # the message after adding
    assert link in client.get("/admin/imagesite/invite/").content.decode()  # and the list


def test_staff_set_a_users_password_in_the_admin(client, django_user_model, owner):
    client.force_login(django_user_model.objects.create_superuser("boss", password=NEW_PASSWORD))
    url = f"/admin/auth/user/{owner.pk}/password/"
    assert client.get(url).status_code == 200
    client.post(url, {"password1": "set-by-staff-9911", "password2": "set-by-staff-9911", "usable_password": "true"})
    owner.refresh_from_db()
    assert owner.check_password("set-by-staff-9911")


def test_the_api_has_no_sign_up(client):
    from drf_spectacular.generators import SchemaGenerator

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    assert not [p for p in paths if re.search(r"sign.?up|regist|users", p)]
    assert client.post("/api/v1/me/", {"username": "x", "password": NEW_PASSWORD}).status_code in (401, 403)
    assert not User.objects.exists()


# --- password reset -----------------------------------------------------------------------------------
def test_password_reset_mails_a_link_that_sets_a_new_password(client, owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner.email = "owner@example.org"
    owner.save(update_fields=["email"])
    assert "Forgot your password?" in client.get(LOGIN).content.decode()
    response = client.post(RESET, {"email": "Owner@Example.org"})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["owner@example.org"]
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/)", mail.outbox[0].body).group(1)

    form_page = client.get(link, follow=True)  # Django moves the token into the session first
    assert "Set a new password" in form_page.content.decode()
    done = client.post(form_page.redirect_chain[-1][0], {"new_password1": "brand-new-pass-7733", "new_password2": "brand-new-pass-7733"})
    assert done.status_code == 302 and done.url == reverse("password_reset_complete")
    owner.refresh_from_db()
    assert owner.check_password("brand-new-pass-7733")
    assert "This link no longer works" in client.get(link, follow=True).content.decode()  # once only


def test_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    response = client.post(RESET, {"email": "nobody@example.org"})
    assert response.status_code == 302 and response.url == reverse("password_reset_done")
    assert mail.outbox == []


def test_reset_requests_are_throttled_per_address(client, owner, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.IMAGESITE_PASSWORD_RESET_PER_HOUR = 3
    owner.email = "owner@example.org"
    owner.save(update_fields=["email"])
    codes = [client.post(RESET, {"email": "owner@example.org"}).status_code for _ in range(5)]
    assert codes == [302, 302, 302, 429, 429] and len(mail.outbox) == 3
    assert "Too many password-reset requests" in client.post(RESET, {"email": "OWNER@example.org"}).content.decode()
    # One client trying many addresses is capped too (3 × the per-address limit in all).
    codes = [client.post(RESET, {"email": f"someone{i}@example.org"}).status_code for i in range(5)]
    assert 429 in codes


def test_a_user_sets_their_reset_address_with_their_password(owner_client, owner):
    page = owner_client.get(reverse("password_change")).content.decode()
    assert 'action="/accounts/email/"' in page
    wrong = owner_client.post("/accounts/email/", {"email": "thief@example.org", "password": "not-it"}, follow=True)
    assert "not your password" in wrong.content.decode()
    owner.refresh_from_db()
    assert owner.email == ""
    from .conftest import PASSWORD

    response = owner_client.post("/accounts/email/", {"email": "me@example.org", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("password_change")
    owner.refresh_from_db()
    assert owner.email == "me@example.org"
    assert owner_client.get("/accounts/email/").status_code == 405


def test_a_password_reset_ends_the_accounts_login_lock_out(client, owner, settings):
    from axes.models import AccessAttempt

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner.email = "owner@example.org"
    owner.save(update_fields=["email"])
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(LOGIN, {"username": "owner", "password": "wrong-password"})
    assert client.post(LOGIN, {"username": "owner", "password": "correct-horse-battery-staple"}).status_code == 429
    client.post(RESET, {"email": "owner@example.org"})
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    client.post(form_page.redirect_chain[-1][0], {"new_password1": "brand-new-pass-7733", "new_password2": "brand-new-pass-7733"})
    assert not AccessAttempt.objects.filter(username="owner").exists()
    assert client.post(LOGIN, {"username": "owner", "password": "brand-new-pass-7733"}).status_code == 302
