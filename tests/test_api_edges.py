"""Requests that go wrong before any view logic runs (a body too deep, too large, too many fields or
files), and input the schema refuses (unknown fields, a boolean for a number, a malformed page size):
every answer under /api/ is the one JSON error shape; pages keep Django's HTML."""
from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from generation.models import Generation
from training.models import Subject

from .api_support import assert_error, owner_api  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db
URL = "/api/v1/generations/"


def test_deeply_nested_json_is_a_400_not_a_500(owner_api):
    depth = 50_000
    body = assert_error(owner_api.post(URL, "[" * depth + "]" * depth, content_type="application/json"), 400)
    assert "nested deeper" in body["detail"]
    assert Generation.objects.count() == 0


def test_moderately_nested_json_is_refused_too(owner_api):
    value = {"prompt": "x"}
    for _ in range(40):
        value = {"a": value}
    assert "nested deeper" in assert_error(owner_api.post(URL, value, format="json"), 400)["detail"]


def test_body_over_the_size_limit_is_a_413(owner_api):
    response = owner_api.post(URL, {"prompt": "x" * 3_000_000}, format="json")
    assert "2.5 MB" in assert_error(response, 413)["detail"]


def test_too_many_form_fields_is_a_400_naming_the_limit(owner_api):
    response = owner_api.post(URL, "&".join(f"f{i}=1" for i in range(5_001)), content_type="application/x-www-form-urlencoded")
    body = assert_error(response, 400)
    assert body["code"] == "too_many_fields" and "1000" in body["detail"]


def test_too_many_files_is_a_400_naming_the_limit(owner, owner_api):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    files = {f"photo{i}": SimpleUploadedFile(f"{i}.png", b"x") for i in range(101)}
    body = assert_error(owner_api.post(f"/api/v1/subjects/{subject.pk}/photos/", files, format="multipart"), 400)
    assert body["code"] == "too_many_files" and "100" in body["detail"]


def test_session_requests_hit_the_limits_in_the_csrf_check_and_still_get_json(owner):
    # SessionAuthentication's CSRF check reads request.POST first: the limit is raised there.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    browser.cookies["csrftoken"] = "a" * 32  # a cookie but no token: the check looks in the body
    body = assert_error(browser.post(URL, {f"f{i}": "1" for i in range(5_001)}), 400)
    assert body["code"] == "too_many_fields"
    assert_error(browser.post(URL, {"prompt": "x" * 3_000_000}), 413)
    assert_error(browser.post(URL, {"prompt": "a circle"}), 403)  # and no token: the CSRF 403, in JSON


def test_pages_keep_djangos_html_answers(owner_client):
    response = owner_client.post("/", {f"f{i}": "1" for i in range(5_001)})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    missing = owner_client.get("/no-such-page/")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("text/html")


def test_unknown_api_path_and_wrong_method_are_json(owner_api):
    assert_error(owner_api.get("/api/v1/no-such-thing/"), 404)
    assert_error(owner_api.put(URL, {}, format="json"), 405)


def test_unknown_field_is_a_400_suggesting_the_known_one(owner_api):
    body = assert_error(owner_api.post(URL, {"prompt": "x", "negtive_prompt": "y"}, format="json"), 400, "negtive_prompt")
    assert "negative_prompt" in body["errors"]["negtive_prompt"][0]
    assert Generation.objects.count() == 0


def test_unknown_field_in_a_form_body_is_named_too(owner_api):
    assert_error(owner_api.post(URL, {"prompt": "x", "stepz": "4"}, format="multipart"), 400, "stepz")


@pytest.mark.parametrize("url,method", [("/api/v1/me/", "patch"), ("/api/v1/subjects/", "post")])
def test_every_json_input_refuses_unknown_fields(owner_api, url, method):
    assert_error(getattr(owner_api, method)(url, {"name": "Rex", "class_noun": "dog", "colour": "red"}, format="json"), 400, "colour")


def test_read_only_field_says_so(owner_api):
    body = assert_error(owner_api.patch("/api/v1/me/", {"username": "someone"}, format="json"), 400, "username")
    assert "Read-only" in body["errors"]["username"][0]


@pytest.mark.parametrize("data,field", [
    ({"prompt": "x", "guidance_scale": False}, "guidance_scale"),
    ({"prompt": "x", "steps": True}, "steps"),
    ({"prompt": "x", "steps": "4"}, "steps"),  # JSON says its types
    ({"prompt": "x", "negative_prompt": 0}, "negative_prompt"),
])
def test_json_values_must_have_the_schemas_type(owner_api, data, field):
    assert_error(owner_api.post(URL, data, format="json"), 400, field)


def test_form_bodies_still_give_numbers_as_text(owner_api):
    assert owner_api.post(URL, {"prompt": "a red circle", "steps": "4", "guidance_scale": "7.5"}).status_code == 202


@pytest.mark.parametrize("query", ["page_size=abc", "page_size=0", "page_size=101", "page_size=-1", "page_size=%D9%A1"])
def test_malformed_page_size_is_a_400(owner_api, query):
    assert_error(owner_api.get(f"{URL}?{query}"), 400, "page_size")


# not base64; then base64 of p=<20-digit time>_1, o=1&p=1_1 (an offset), p=1, r=1 (no position), p=1_<20-digit id>
@pytest.mark.parametrize("query", ["cursor=abc", "cursor=cD05OTk5OTk5OTk5OTk5OTk5OTk5OV8x", "cursor=bz0xJnA9MV8x", "cursor=cD0x",
                                   "cursor=cj0x", "cursor=cD0xXzk5OTk5OTk5OTk5OTk5OTk5OTk5"])
def test_cursor_that_is_not_ours_is_a_404(owner_api, query):
    assert_error(owner_api.get(f"{URL}?{query}"), 404)


@pytest.mark.parametrize("query", ["page=abc", "page=0", "page=last", "page=2"])
def test_page_that_is_not_there_is_a_404(owner_api, query):
    assert_error(owner_api.get(f"/api/v1/subjects/?{query}"), 404)


@pytest.mark.parametrize("query", ["generation=0", "generation=-1", "generation=99999999999999999999"])
def test_id_filters_outside_the_schema_are_400(owner_api, query):
    assert_error(owner_api.get(f"/api/v1/images/?{query}"), 400, "generation")


@pytest.mark.parametrize("path", ["0", "-1", "99999999999999999999"])
def test_path_ids_outside_the_schema_are_404(owner_api, path):
    assert_error(owner_api.get(f"{URL}{path}/"), 404)


def test_subject_fields_must_match_the_stated_rules(owner_api):
    assert_error(owner_api.post("/api/v1/subjects/", {"name": "Rex", "class_noun": "dog", "token": " sks"}, format="json"), 400, "token")
    assert_error(owner_api.post("/api/v1/subjects/", {"name": "\f", "class_noun": "dog"}, format="json"), 400, "name")
    assert owner_api.post("/api/v1/subjects/", {"name": "Rex", "class_noun": "Dog", "token": "QZX"}, format="json").status_code == 201


def test_schema_states_the_rules(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    subject = schema["components"]["schemas"]["SubjectCreateRequest"]
    assert subject["additionalProperties"] is False
    assert subject["properties"]["token"]["pattern"] == "^[A-Za-z][A-Za-z0-9]{1,15}$"
    assert "pattern" in subject["properties"]["class_noun"] and subject["properties"]["class_noun"]["maxLength"] == 40
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/generations/"]["get"]["parameters"]}
    assert parameters["page_size"] == {"type": "integer", "minimum": 1, "maximum": 100}
    detail = schema["paths"]["/api/v1/generations/{id}/"]["get"]["parameters"][0]["schema"]
    assert detail["type"] == "integer" and detail["minimum"] == 1
    assert "413" in schema["paths"]["/api/v1/generations/"]["post"]["responses"]
