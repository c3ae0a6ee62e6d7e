"""The Generate page's mask painter in a real browser (Debian's chromium through Playwright, as
tests/test_browser.py drives it): choose an input image, paint on it with the mouse, press
Ctrl+Enter; the job is created with a mask of the input's pixel size, white where painted. When the
img2img service and worker are in, a real qcluster inpaints it with the demo model (the test checks
that the job finishes with its image, not what the picture shows)."""
from __future__ import annotations

import inspect
import io
import re

import pytest
from PIL import Image

from .test_browser import CHROMIUM, SCREENSHOTS, _log_in, browser_page  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]

INPUT_SIZE = (64, 48)  # not square: a mask of the wrong orientation would show


def _inpainting_is_in() -> bool:
    from generation import services

    return "mask" in inspect.signature(services.create_generation).parameters


def _paint_and_generate(page, live_server, owner, tmp_path):
    """Choose a red input, paint a stroke across its middle with the mouse, press Ctrl+Enter."""
    from playwright.sync_api import expect

    _log_in(page, live_server, owner)
    picture = tmp_path / "input.png"
    Image.new("RGB", INPUT_SIZE, (220, 30, 30)).save(picture)
    page.goto(live_server.url + "/")
    page.fill("#id_prompt", "a yellow star")
    page.fill("#id_steps", "4")
    page.set_input_files("#id_init_image", str(picture))
    expect(page.locator("#chosen-input")).to_be_visible()
    assert page.input_value("#id_width") == "" and page.input_value("#id_height") == ""  # the size follows the input
    page.locator("#mask-painter summary").click()
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    assert canvas.evaluate("c => [c.width, c.height]") == list(INPUT_SIZE)  # the mask's pixels are the input's
    page.eval_on_selector("#mask-brush", "b => { b.value = 12; }")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()  # drawn larger than its 64×48 pixels
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "mask-editor.png"), full_page=True)
    page.locator("#id_prompt").press("Control+Enter")
    expect(page).to_have_url(re.compile(r"/\?job=\d+#job$"))
    expect(page.locator("#job-status")).to_be_visible()
    expect(page.locator("#id_prompt")).to_have_value("a yellow star")  # the settings stay


@pytest.mark.django_db(transaction=True)
def test_paint_a_mask_on_the_input_and_generate(live_server, browser_page, django_user_model, tmp_path, no_worker):  # noqa: F811
    from generation.models import Generation

    page = browser_page
    owner = django_user_model.objects.create_user("painter", password="a-long-enough-passphrase-42")
    _paint_and_generate(page, live_server, owner, tmp_path)
    job = Generation.objects.get()
    with job.mask.open("rb") as f:
        mask = Image.open(io.BytesIO(f.read())).convert("L")
    assert mask.size == INPUT_SIZE
    assert mask.getpixel((32, 24)) == 255 and mask.getpixel((2, 2)) == 0 and mask.getpixel((61, 45)) == 0
    # Outpainting: the page carries the job's input and mask; "→" extends the picture to the right,
    # and the next job gets the wider input with the new strip white in its mask.
    page.wait_for_function("() => { const c = document.querySelector('#mask-canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                           " return d.some((v, i) => i % 4 == 3 && v > 0); }")  # the last mask, painted back
    page.locator("button[data-extend='0,0,1,0']").click()
    page.locator("#id_prompt").press("Control+Enter")
    page.wait_for_function("n => document.querySelectorAll('#recent a.recent').length == n", arg=2)
    wider = Generation.objects.exclude(pk=job.pk).get()
    with wider.init_image.open("rb") as f, wider.mask.open("rb") as g:
        picture, strip = Image.open(io.BytesIO(f.read())), Image.open(io.BytesIO(g.read())).convert("L")
    assert picture.size == strip.size == (INPUT_SIZE[0] + 16, INPUT_SIZE[1])  # a quarter of 64, a multiple of 8
    assert strip.getpixel((75, 2)) == 255 and strip.getpixel((32, 24)) == 255 and strip.getpixel((2, 2)) == 0
    edge = picture.convert("RGB").getpixel((75, 24))  # the input's edge stretched into the strip (canvas rounding aside)
    assert all(abs(a - b) <= 3 for a, b in zip(edge, (220, 30, 30))), edge

    # A phone still gets the whole page, the job included.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(SCREENSHOTS / "phone-studio.png"), full_page=True)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not _inpainting_is_in(), reason="the img2img/inpainting service is not in yet")
def test_the_painted_job_is_inpainted_by_the_worker(live_server, browser_page, django_user_model, tmp_path, worker):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    owner = django_user_model.objects.create_user("painter", password="a-long-enough-passphrase-42")
    _paint_and_generate(page, live_server, owner, tmp_path)
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    expect(page.locator("#job-status img.result")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "inpainted.png"), full_page=True)
