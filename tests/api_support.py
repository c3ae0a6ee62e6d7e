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


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each POST and answers with the next status code
    from `codes` (the last one repeats)."""

    def __init__(self, codes: list[int] | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.codes = list(codes or [200])
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                code = receiver.codes.pop(0) if len(receiver.codes) > 1 else receiver.codes[0]
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    r = Receiver()
    yield r
    r.close()


def checkered_photo(seed: int):
    """A small two-colour checkered square on a plain background, as an upload (made with Pillow)."""
    import io
    import random

    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    x0, y0 = 12 + rng.randrange(6), 12 + rng.randrange(6)
    for i in range(4):
        for j in range(4):
            color = (245, 220, 30) if (i + j) % 2 else (140, 40, 175)
            draw.rectangle([x0 + 10 * i, y0 + 10 * j, x0 + 10 * i + 9, y0 + 10 * j + 9], fill=color)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return SimpleUploadedFile(f"check{seed}.png", buffer.getvalue(), content_type="image/png")
