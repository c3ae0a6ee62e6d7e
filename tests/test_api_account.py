"""Tokens (account page), authentication (token, session + CSRF), /me, /models, schema and docs."""
from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from api.models import ApiToken, WebhookSettings, hash_token
from imagesite.models import UserLimits

from .api_support import anon_api, assert_error, other_api, owner_api  # noqa: F401  (fixtures)
from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db

PAGE = "/accounts/api/"


def _bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


# --- the account page ------------------------------------------------------------------------------
def test_token_is_shown_once_and_only_its_hash_is_stored(owner, owner_client):
    response = owner_client.post(PAGE, {"token-name": "my script"}, follow=True)
    key = re.search(r"isk_[A-Za-z0-9_-]+", response.content.decode()).group(0)
    token = ApiToken.objects.get()
    assert token.owner == owner and token.name == "my script" and token.key_hash == hash_token(key)
    assert key not in str(ApiToken.objects.values_list()) and token.hint == key[:10]
    assert key not in owner_client.get(PAGE).content.decode()  # never again
    assert _bearer(key).get("/api/v1/me/").json()["username"] == "owner"


def test_token_needs_a_name(owner_client):
    response = owner_client.post(PAGE, {"token-name": ""})
    assert response.status_code == 200 and not ApiToken.objects.exists()


def test_revoked_token_stops_working(owner, owner_client):
    token, key = ApiToken.create_for(owner, "old")
    assert _bearer(key).get("/api/v1/me/").status_code == 200
    assert owner_client.post(reverse("api-token-revoke", args=[token.pk])).status_code == 302
    body = assert_error(_bearer(key).get("/api/v1/me/"), 401)
    assert "revoked" in body["detail"]
    assert token.hint not in owner_client.get(PAGE).content.decode()


def test_other_user_cannot_revoke_my_token(owner, other_client):
    token, key = ApiToken.create_for(owner, "mine")
    assert other_client.post(reverse("api-token-revoke", args=[token.pk])).status_code == 404
    assert _bearer(key).get("/api/v1/me/").status_code == 200


def test_account_page_needs_login_and_methods(owner, owner_client):
    assert Client().get(PAGE)["Location"].startswith(reverse("login"))
    token, _ = ApiToken.create_for(owner, "x")
    assert owner_client.get(reverse("api-token-revoke", args=[token.pk])).status_code == 405
    assert owner_client.get(reverse("api-webhook-secret-rotate")).status_code == 405
    assert owner_client.put(PAGE).status_code == 405


def test_page_sets_default_webhook_url_and_rotates_secret(owner, owner_client, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    response = owner_client.post(PAGE, {"hooks-default_url": "http://127.0.0.1/x"})
    assert "loopback" in response.content.decode()
    owner_client.post(PAGE, {"hooks-default_url": "https://8.8.8.8/hook"})
    hooks = WebhookSettings.for_user(owner)
    assert hooks.default_url == "https://8.8.8.8/hook" and hooks.secret in owner_client.get(PAGE).content.decode()
    owner_client.post(reverse("api-webhook-secret-rotate"))
    assert WebhookSettings.for_user(owner).secret != hooks.secret


# --- authentication --------------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["Bearer nope", "Bearer", "Token isk_wrong", "Bearer a b"])
def test_bad_tokens_are_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error(client.get("/api/v1/me/"), 401)


def test_drf_token_keyword_works_too(owner):
    _, key = ApiToken.create_for(owner, "t")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/me/").status_code == 200


def test_session_auth_needs_csrf_for_writes(owner):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.get("/api/v1/generations/").status_code == 200
    body = assert_error(browser.post("/api/v1/generations/", {"prompt": "a circle"}, content_type="application/json"), 403)
    assert "CSRF" in body["detail"]
    browser.get(PAGE)  # sets the CSRF cookie, as any page does
    token = browser.cookies["csrftoken"].value
    response = browser.post("/api/v1/generations/", {"prompt": "a circle"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202


def test_inactive_users_token_is_401(owner):
    _, key = ApiToken.create_for(owner, "t")
    owner.is_active = False
    owner.save()
    assert_error(_bearer(key).get("/api/v1/me/"), 401)


# --- me and models -----------------------------------------------------------------------------------
def test_me_shows_usage_and_limits(owner, other_user, owner_api, settings):
    make_generation(owner)
    make_image(owner)
    make_generation(other_user)
    UserLimits.objects.create(user=owner, generations_per_hour=5)
    body = owner_api.get("/api/v1/me/").json()
    assert body["username"] == "owner"
    assert body["usage"]["active_jobs"] == 1 and body["usage"]["generations_last_hour"] == 2 and body["usage"]["images_total"] == 1
    assert body["limits"]["generations_per_hour"] == 5
    assert body["limits"]["max_queued_jobs"] == settings.IMAGESITE_API_LIMITS["max_queued_jobs"]


def test_me_sets_the_default_webhook_url(owner, owner_api, settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False
    assert_error(owner_api.patch("/api/v1/me/", {"default_webhook_url": "http://10.1.2.3/"}, format="json"), 400, "default_webhook_url")
    body = owner_api.patch("/api/v1/me/", {"default_webhook_url": "https://8.8.8.8/h"}, format="json").json()
    assert body["default_webhook_url"] == "https://8.8.8.8/h" == WebhookSettings.for_user(owner).default_url


def test_me_methods_and_anonymous(anon_api, owner_api):
    assert_error(anon_api.get("/api/v1/me/"), 401)
    assert_error(owner_api.put("/api/v1/me/", {}, format="json"), 405)
    assert_error(owner_api.delete("/api/v1/me/"), 405)


def test_models_describes_the_loaded_model(owner_api, anon_api):
    (model,) = owner_api.get("/api/v1/models/").json()
    assert model["name"] and model["native_size"] == max(model["defaults"]["width"], model["defaults"]["height"])
    assert model["limits"]["min_size"] <= model["native_size"] <= model["limits"]["max_size"]
    assert {"id": "dpmpp_2m", "label": "DPM++ 2M"} in model["schedulers"]
    assert_error(anon_api.get("/api/v1/models/"), 401)
    assert_error(owner_api.post("/api/v1/models/"), 405)


# --- schema and docs -------------------------------------------------------------------------------
def test_schema_and_offline_docs(client):
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/generations/" in paths and "/api/v1/images/{id}/download/" in paths
    assert paths["/api/v1/generations/"]["post"]["responses"]["202"]
    assert "429" in paths["/api/v1/generations/"]["post"]["responses"]
    docs = client.get("/api/docs/")
    html = docs.content.decode()
    assert docs.status_code == 200 and "swagger-ui" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()  # served from our own static files
    bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', html).group(1)
    assert client.get(bundle).status_code == 200


def test_unknown_api_path_is_404(owner_api):
    assert owner_api.get("/api/v1/nothing-here/").status_code == 404
