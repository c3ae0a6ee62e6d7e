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


# --- settings read from a PNG fill the form (issue 16 item 8, issue 18 defect 3) ----------------------
A1111_HIRES = ("a lighthouse at dusk, (storm:1.2), <lora:ink:0.5>\nNegative prompt: blurry, text\n"
               "Steps: 23, Sampler: Euler a, CFG scale: 6.5, Seed: 4321, Size: 64x48, Model: elsewhere_v2, "
               "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 7, Hires upscaler: Lanczos")
A1111_IMG2IMG = ("a red barn\nSteps: 11, Sampler: DDIM, CFG scale: 7, Seed: 77, Size: 64x64, Denoising strength: 0.35, "
                 "Mask blur: 6")


def _a1111_png(path, text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 48), "grey").save(path, pnginfo=info)
    return path


def _drop(page, path) -> None:
    """Drop the file on the form as a user dragging it from their files would."""
    import base64

    page.evaluate("""(b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
      document.querySelector('form.generate-form').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", base64.b64encode(path.read_bytes()).decode())


@pytest.mark.django_db(transaction=True)
def test_a_png_dropped_or_chosen_fills_the_form_and_attaches_its_subject(live_server, browser_page, django_user_model, tmp_path, no_worker):  # noqa: F811
    from types import SimpleNamespace

    from playwright.sync_api import expect

    from generation.models import Generation
    from generation.png_params import a1111_parameters, encode_png
    from imagesite.jobs import JobStatus
    from training.models import Subject, TrainingRun

    page = browser_page
    owner = django_user_model.objects.create_user("reader", password="a-long-enough-passphrase-42")
    rex = Subject.objects.create(owner=owner, name="Rex", token="rxq", class_noun="dog")
    TrainingRun.objects.create(subject=rex, status=JobStatus.SUCCEEDED, checkpoint="x.safetensors")
    _log_in(page, live_server, owner)
    page.goto(live_server.url + "/")
    notes = page.locator("#png-settings-notes")

    # Our own PNG of a job whose subject was chosen in the subject field: its prompt has no tag.
    ours = SimpleNamespace(prompt="a photo of rxq dog on a beach", negative_prompt="dark", steps=9, guidance_scale=5.0,
                           width=64, height=64, scheduler="euler")
    path = tmp_path / "ours.png"
    path.write_bytes(encode_png(Image.new("RGB", (64, 64)), a1111_parameters(ours, 31, "demo", subject_name="Rex",
                                                                            lora_hashes={"rxq": "0123456789"})))
    _drop(page, path)
    expect(notes).to_contain_text("your subject “Rex” (rxq) is attached")
    expect(page.locator("#attached-subject")).to_contain_text("Rex")
    assert page.input_value("#id_subject") == str(rex.pk)
    assert [page.input_value(f"#id_{name}") for name in ("prompt", "negative_prompt", "seed", "steps")] == [ours.prompt, "dark", "31", "9"]
    page.locator("#id_prompt").press("Control+Enter")
    expect(page).to_have_url(re.compile(r"/\?job=\d+#job$"))
    job = Generation.objects.get()
    assert (job.subject_id, job.seed, job.steps, job.prompt) == (rex.pk, 31, 9, ours.prompt)

    # A1111's hires-fix txt2img file, chosen with the file input: the hires fields fill and the subject goes.
    page.set_input_files("#png-settings-file", str(_a1111_png(tmp_path / "hires.png", A1111_HIRES)))
    expect(page.locator("#id_seed")).to_have_value("4321")
    assert page.input_value("#id_prompt") == "a lighthouse at dusk, (storm:1.2), <lora:ink:0.5>"
    assert [page.input_value(f"#id_{name}") for name in ("negative_prompt", "steps", "hires_scale", "hires_steps", "hires_strength",
                                                         "hires_upscaler")] == ["blurry, text", "23", "2", "7", "0.45", "lanczos"]
    assert page.locator("details.hires").evaluate("d => d.open")
    assert page.input_value("#id_subject") == "" and page.locator("#attached-subject").count() == 0
    expect(notes).to_contain_text("elsewhere_v2 is not offered here")

    # An img2img file: its Denoising strength is the input's strength, and no hires fix is left on.
    page.set_input_files("#png-settings-file", str(_a1111_png(tmp_path / "img2img.png", A1111_IMG2IMG)))
    expect(page.locator("#id_seed")).to_have_value("77")
    assert [page.input_value(f"#id_{name}") for name in ("strength", "mask_blur", "steps", "hires_scale")] == ["0.35", "6", "11", "1"]
    expect(page.locator("#strength-value")).to_have_text("0.35")
    page.screenshot(path=str(SCREENSHOTS / "png-settings.png"), full_page=True)
