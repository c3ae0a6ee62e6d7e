"""A new API token's key is shown once, in the response to the form, and stored nowhere in clear:
not in a session, not in any table."""
from __future__ import annotations

import re

import pytest
from django.contrib.sessions.models import Session
from django.db import connection

from api.models import ApiToken, hash_token

pytestmark = pytest.mark.django_db

PAGE = "/accounts/api/"
KEY = re.compile(r"isk_[A-Za-z0-9_-]{20,}")  # a whole key, not the 10-character hint the list shows


def _create_token(client, name: str = "my script") -> tuple:
    response = client.post(PAGE, {"token-name": name})
    return response, KEY.findall(response.content.decode())


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
    assert response.status_code == 201 and len(keys) == 1
    assert "no-store" in response["Cache-Control"]
    assert ApiToken.objects.get(owner=owner).key_hash == hash_token(keys[0])


def test_new_key_is_in_no_session(owner_client):
    _, [key] = _create_token(owner_client)
    sessions = list(Session.objects.all())  # right after the POST, where a redirect would have kept it
    assert sessions  # the owner's login session is there to look into
    for session in sessions:
        assert key not in session.session_data and key not in repr(session.get_decoded())


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
