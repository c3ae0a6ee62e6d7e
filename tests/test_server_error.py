import json

import pytest
from django.test import Client
from django.urls import path

from imagesite import urls as root_urls


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("api/v1/boom/", boom), path("boom/", boom)]
handler500 = root_urls.handler500


@pytest.mark.urls("tests.test_server_error")
def test_api_server_error_is_json_and_pages_get_the_html_page():
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/boom/")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["status"] == 500 and body["code"] == "server_error" and "Traceback" not in response.content.decode()
    page = client.get("/boom/")
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
