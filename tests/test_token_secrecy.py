"""A new API token's key is shown once, on the page the form's POST redirects to (post/redirect/get),
and stored nowhere in clear: not in a session, not in any table, not in the browser's cookies. It
travels from the POST to that page as two halves of a one-time pad: a random pad in the session,
and key XOR pad in a signed, HttpOnly, SameSite=Strict browser-session cookie that only that page
receives and that page deletes."""
from __future__ import annotations

import base64
import re
import time
from unittest.mock import patch
from urllib.parse import unquote

import pytest
from django.contrib.sessions.models import Session
from django.db import connection

from api.models import ApiToken, hash_token
from api.pages import NEW_KEY_COOKIE, NEW_KEY_MAX_AGE_S

pytestmark = pytest.mark.django_db

PAGE = "/accounts/api/"
KEY = re.compile(r"isk_[A-Za-z0-9_-]{20,}")  # a whole key, not the 10-character hint the list shows


def _create_token(client, name: str = "my script") -> tuple:
    """POST the form (it redirects), then view the page it redirects to: the one view with the key."""
    posted = client.post(PAGE, {"token-name": name})
    if posted.status_code != 302:
        return posted, KEY.findall(posted.content.decode())
    assert posted["Location"] == PAGE and not KEY.search(posted.content.decode())
    response = client.get(posted["Location"])
    return response, KEY.findall(response.content.decode())


def b64decode_loose(text: str) -> str:
    """`text` read as URL-safe base64, as far as it decodes ("" when it does not)."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("latin-1")
    except ValueError:
        return ""


def _every_stored_value() -> str:
    """Every row of every table, as text (the test database is SQLite or PostgreSQL alike)."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


def test_new_key_is_shown_once_in_an_uncached_response(owner, owner_client):
    response, keys = _create_token(owner_client)
    assert response.status_code == 200 and len(keys) == 1
    assert "no-store" in response["Cache-Control"]
    assert ApiToken.objects.get(owner=owner).key_hash == hash_token(keys[0])


def test_reloading_after_the_post_makes_no_second_token(owner, owner_client):
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    assert posted.status_code == 302 and ApiToken.objects.count() == 1
    owner_client.get(PAGE)
    owner_client.get(PAGE)  # what a reload now repeats
    assert ApiToken.objects.count() == 1


def test_the_key_travels_in_a_short_strict_cookie_for_that_page_only(owner_client):
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    cookie = posted.cookies[NEW_KEY_COOKIE]
    assert cookie["path"] == PAGE and cookie["httponly"] and cookie["samesite"] == "Strict"
    # A browser-session cookie (gone when the browser closes); its signed timestamp limits it to 2 minutes.
    assert cookie["max-age"] == "" and cookie["expires"] == ""
    shown = owner_client.get(PAGE)
    assert shown.cookies[NEW_KEY_COOKIE]["max-age"] == 0  # deleted by the one view that shows it
    assert not KEY.search(owner_client.get(PAGE).content.decode())


def test_the_cookie_does_not_carry_the_key(owner_client):
    """The browser's cookie store, which may write even a session cookie to disk, never holds the key:
    the cookie carries key XOR a random pad, whose other half is in the session (and only until the
    page shows the key)."""
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    value = posted.cookies[NEW_KEY_COOKIE].value
    [key] = KEY.findall(owner_client.get(PAGE).content.decode())
    secret = key[len("isk_"):]
    for text in (value, unquote(value), *(b64decode_loose(part) for part in value.split(":"))):
        assert secret[:8] not in text and key not in text


def test_the_cookie_is_no_good_after_two_minutes_or_in_another_session(owner, owner_client, client):
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    value = posted.cookies[NEW_KEY_COOKIE].value
    with patch("django.core.signing.time.time", return_value=time.time() + NEW_KEY_MAX_AGE_S + 1):
        assert not KEY.search(owner_client.get(PAGE).content.decode())
    client.force_login(owner)  # the same user in another browser: the pad is in the first one's session
    client.cookies[NEW_KEY_COOKIE] = value
    assert not KEY.search(client.get(PAGE).content.decode())


def test_a_forged_or_foreign_cookie_shows_nothing(owner, owner_client, other_client):
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    value = posted.cookies[NEW_KEY_COOKIE].value
    other_client.cookies[NEW_KEY_COOKIE] = value  # the owner's cookie in another user's session
    assert not KEY.search(other_client.get(PAGE).content.decode())
    owner_client.cookies[NEW_KEY_COOKIE] = value.replace(":", ":x", 1)  # tampered: the signature fails
    assert not KEY.search(owner_client.get(PAGE).content.decode())


def test_a_revoked_tokens_key_is_not_shown(owner, owner_client):
    owner_client.post(PAGE, {"token-name": "my script"})
    ApiToken.objects.get().revoke()
    assert not KEY.search(owner_client.get(PAGE).content.decode())


def test_new_key_is_in_no_session(owner_client):
    posted = owner_client.post(PAGE, {"token-name": "my script"})
    between = [(s.session_data, repr(s.get_decoded())) for s in Session.objects.all()]  # before the page shows it
    [key] = KEY.findall(owner_client.get(posted["Location"]).content.decode())
    after = [(s.session_data, repr(s.get_decoded())) for s in Session.objects.all()]
    assert between and after  # the owner's login session is there to look into
    for data, decoded in between + after:
        assert key not in data and key not in decoded


def test_new_key_is_in_no_table(owner_client):
    _, [key] = _create_token(owner_client)
    stored = _every_stored_value()
    assert "api_apitoken" in connection.introspection.table_names() and hash_token(key) in stored
    assert key not in stored and key[len("isk_"):] not in stored


def test_reloading_the_page_does_not_show_the_key_again(owner_client):
    _, [key] = _create_token(owner_client)
    response = owner_client.get(PAGE)
    assert response.status_code == 200 and key not in response.content.decode()
    assert not KEY.search(response.content.decode())


def test_other_user_never_sees_the_key(owner_client, other_client):
    _, [key] = _create_token(owner_client)
    assert key not in other_client.get(PAGE).content.decode()


def test_invalid_form_shows_no_key_and_makes_no_token(owner_client):
    response, keys = _create_token(owner_client, "")
    assert response.status_code == 200 and keys == [] and not ApiToken.objects.exists()
