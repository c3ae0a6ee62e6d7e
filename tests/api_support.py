"""Fixtures and helpers shared by the API tests (imported by tests/test_api_*.py)."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from api.models import ApiToken


def token_client(user) -> APIClient:
    _, key = ApiToken.create_for(user, "tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


@pytest.fixture
def owner_api(owner) -> APIClient:
    return token_client(owner)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return token_client(other_user)


def assert_error(response, status: int, field: str | None = None) -> dict:
    """Every error has the one shape; `field` must be among its field errors."""
    assert response.status_code == status, (response.status_code, getattr(response, "data", response.content[:300]))
    body = response.json()
    assert set(body) == {"status", "code", "detail", "errors"}, body
    assert body["status"] == status
    if field is not None:
        assert field in body["errors"] and body["errors"][field], body
    return body
