"""The base layout: a favicon on every page (no 404 in every page's log) and the stylesheet's
promises that a test can read without a browser (tests/test_browser.py measures the rest)."""
from __future__ import annotations

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/accounts/login/", "/gallery/"])
def test_every_page_links_the_favicon(owner_client, url):
    from django.test import Client

    client = owner_client if url == "/gallery/" else Client()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in client.get(url).content.decode()


def test_favicon_ico_leads_to_the_static_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == "/static/favicon.svg"
    assert "max-age=86400" in response["Cache-Control"]
    with open(finders.find("favicon.svg")) as f:
        assert f.read().startswith("<svg")
    assert client.post("/favicon.ico").status_code == 405


def test_gallery_tiles_show_the_whole_image():
    """Thumbnails keep the image's aspect (generation.pipeline.encode_thumbnail); the square tile
    letterboxes them instead of cropping a star's points off."""
    with open(finders.find("css/site.css")) as f:
        css = f.read()
    tile_rule = next(line for line in css.splitlines() if line.startswith(".tile {"))
    assert "object-fit:contain" in tile_rule and "cover" not in tile_rule
