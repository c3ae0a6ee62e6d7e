"""Pages the first phone-width test (tests/test_browser.py) does not visit, at 390 px in Debian's
chromium: the LoRAs page, the account's export and delete pages, the password-reset pages and the
page a refused sign-up gets (issue 18: every page fits a phone)."""
from __future__ import annotations

import pytest

from .test_browser import CHROMIUM, PHONE, SCREENSHOTS, _log_in, browser_page  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]


def _lora_with_a_long_name(owner, tmp_path):
    """A LoRA row on the page (a small kohya-layout file of zeros: the page shows it, nothing draws with it)."""
    import torch
    from django.core.files.uploadedfile import SimpleUploadedFile
    from safetensors.torch import save_file

    from generation.prompt_files import upload_lora

    path = tmp_path / "a_rather_long_lora_name_from_civitai_v2_final.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(4, 32), "lora_unet_a.lora_up.weight": torch.zeros(32, 4)}, str(path))
    return upload_lora(owner=owner, file=SimpleUploadedFile(path.name, path.read_bytes()))


def _fits(page, url: str, live_server, *, status: int = 200) -> int:
    response = page.goto(live_server.url + url)
    assert response.status == status, (url, response.status)
    return page.evaluate("document.documentElement.scrollWidth")


@pytest.mark.django_db(transaction=True)
def test_account_lora_reset_and_refused_sign_up_pages_fit_a_390_px_phone(live_server, browser_page, django_user_model, settings, tmp_path):  # noqa: F811
    from django.contrib.auth.tokens import default_token_generator
    from django.urls import reverse
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    page = browser_page
    page.set_viewport_size(PHONE)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    settings.IMAGESITE_SIGNUP = "closed"
    owner = django_user_model.objects.create_user("a-rather-long-username", email="someone.with.a.long.address@example.org",
                                                  password="a-long-enough-passphrase-42")
    widths = {}

    # Logged out: the refused sign-up (a 403 page of its own) and every step of a password reset.
    widths["signup (closed)"] = _fits(page, reverse("signup"), live_server, status=403)
    assert "staff create accounts" in page.inner_text("main")
    page.screenshot(path=str(SCREENSHOTS / "phone-signup-refused.png"), full_page=True)
    confirm = reverse("password_reset_confirm", args=[urlsafe_base64_encode(force_bytes(owner.pk)), default_token_generator.make_token(owner)])
    for url in (reverse("password_reset"), reverse("password_reset_done"), confirm, reverse("password_reset_complete")):
        widths[url] = _fits(page, url, live_server)
    page.goto(live_server.url + confirm)  # the set-a-new-password form itself, after the token's redirect
    assert page.locator("input[type=password]").count() == 2
    page.screenshot(path=str(SCREENSHOTS / "phone-password-reset.png"), full_page=True)

    # Logged in: the LoRAs page with a row, the account's export and delete pages.
    _lora_with_a_long_name(owner, tmp_path)
    _log_in(page, live_server, owner)
    header_ends = {}
    for url in (reverse("prompt-files"), reverse("account-export"), reverse("account-delete")):
        widths[url] = _fits(page, url, live_server)
        box = page.locator(".topbar .account button").bounding_box()  # Log out, the header's last item, on screen
        header_ends[url] = box["x"] + box["width"]
        page.screenshot(path=str(SCREENSHOTS / f"phone-{url.strip('/').replace('/', '-')}.png"), full_page=True)
    assert {url: width for url, width in widths.items() if width > PHONE["width"]} == {}
    assert all(end <= PHONE["width"] for end in header_ends.values()), header_ends
