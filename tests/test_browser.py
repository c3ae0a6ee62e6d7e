"""The whole slice in a real browser: sign up → generate → live progress → the image in the gallery.

Playwright drives Debian's chromium (`apt-get install chromium`; .ci/run does it), never a downloaded
browser. The page talks to pytest-django's live server; a real qcluster subprocess on the same test
database renders the image with the demo model.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]

# Every htmx swap of the job panel and every status it showed, recorded by the page itself; the
# marker on window survives only if the page was never reloaded.
RECORD_UPDATES = """() => {
  window.__sameDocument = true;
  window.__swaps = 0;
  window.__seen = [document.querySelector('#job-status').dataset.status];
  document.body.addEventListener('htmx:afterSwap', () => {
    window.__swaps += 1;
    const panel = document.querySelector('#job-status');
    if (panel) window.__seen.push(panel.dataset.status + ' ' + panel.innerText.replace(/\\s+/g, ' '));
  });
}"""


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, so Django would refuse ORM calls made
    # here meanwhile (SynchronousOnlyOperation). Allowed for this test only, not the whole session.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(15_000)
        yield page
        browser.close()


@pytest.mark.django_db(transaction=True)
def test_sign_up_generate_watch_progress_and_find_the_image_in_the_gallery(live_server, worker, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    page.goto(f"{live_server.url}/accounts/signup/")
    page.fill("#id_username", "painter")
    page.fill("#id_password1", "a-long-enough-passphrase-42")
    page.fill("#id_password2", "a-long-enough-passphrase-42")
    page.click("button[type=submit]")
    expect(page.locator(".account")).to_contain_text("painter")

    # Generate: the model's first example-prompt chip fills the prompt (the demo model ships some);
    # 150 steps keep the job running for a few of the page's 1 s polls even on a fast machine.
    chip = page.locator(".chip[data-prompt]").first
    prompt = chip.get_attribute("data-prompt")
    chip.click()
    expect(page.locator("#id_prompt")).to_have_value(prompt)
    page.fill("#id_steps", "150")
    page.click("button.primary")
    expect(page).to_have_url(re.compile(r"/\?job=\d+#job$"))
    expect(page.locator("#job h2.prompt")).to_have_text(prompt)

    # The job page updates itself (htmx polling) until the images appear, with no reload.
    page.evaluate(RECORD_UPDATES)
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    images = page.locator("#job-status img.result")
    expect(images).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True, "the job page reloaded instead of updating in place"
    assert page.evaluate("window.__swaps") >= 1, "the job panel was never swapped by htmx"
    seen = page.evaluate("window.__seen")
    assert seen[0] in ("queued", "running"), seen
    assert seen[-1].startswith("succeeded"), seen
    # 150 steps take a few seconds on a CPU (40 could end between two polls on a quiet machine), so at least one 1 s poll lands mid-render.
    assert any(s.startswith("running") for s in seen), seen
    swapped_running = [s for s in seen[1:] if s.startswith("running")]
    # A running job shows its step, or (a worker's first job) that the model is loading.
    assert all(re.search(r"step \d+ of 150|Loading model", s) for s in swapped_running), seen
    assert _image_loaded(page, "#job-status img.result")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)

    # The gallery shows it, served by the ownership-checked thumbnail view.
    page.locator(".topbar nav").get_by_role("link", name="Gallery").click()
    tile = page.locator(".gallery a.tile")
    expect(tile).to_have_count(1)
    expect(tile).to_have_attribute("title", prompt)
    assert _image_loaded(page, ".gallery a.tile img")
    page.screenshot(path=str(SCREENSHOTS / "gallery.png"), full_page=True)

    tile.click()
    expect(page.locator("h1.prompt")).to_have_text(prompt)
    assert _image_loaded(page, "img.full")


def _image_loaded(page, selector: str) -> bool:
    """True when the <img> finished loading real pixels (a 404 or a broken PNG has naturalWidth 0)."""
    page.wait_for_function(
        "sel => { const img = document.querySelector(sel); return img && img.complete; }", arg=selector
    )
    return page.eval_on_selector(selector, "img => img.naturalWidth > 0")


# --- issue 18: pages a newcomer trips over (no worker: rows and files are made here) --------------
PHONE = {"width": 390, "height": 844}


def _log_in(page, live_server, user) -> None:
    """The browser gets a session made by Django's test client (no login form round trip)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])


def _photo_files(tmp_path: Path, count: int) -> list[str]:
    from PIL import Image

    paths = []
    for i in range(count):
        path = tmp_path / f"photo{i}.jpg"
        Image.new("RGB", (96, 80), (40 * i, 90, 200)).save(path, "JPEG")
        paths.append(str(path))
    return paths


def _subject_with_photos(owner, tmp_path: Path):
    """A subject with three processed photos (the worker's task called here) and a finished run."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from imagesite.jobs import JobStatus
    from training import services
    from training.models import Subject, TrainingRun
    from training.tasks import process_photo

    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    files = [SimpleUploadedFile(Path(p).name, Path(p).read_bytes(), content_type="image/jpeg") for p in _photo_files(tmp_path, 3)]
    for photo in services.add_photos(subject=subject, files=files).accepted:
        process_photo(photo.pk)
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, progress_step=10, progress_total=10)
    return subject, run


@pytest.mark.django_db(transaction=True)
def test_every_main_page_fits_a_390_px_phone(live_server, browser_page, django_user_model, tmp_path):
    from django.urls import reverse

    from .factories import make_image

    page = browser_page
    page.set_viewport_size(PHONE)
    for url in ("/accounts/login/", "/accounts/signup/"):
        page.goto(live_server.url + url)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], url
    owner = django_user_model.objects.create_user("a-rather-long-username", password="a-long-enough-passphrase-42")
    image = make_image(owner, prompt="a white heart on a green background, " * 4)
    subject, run = _subject_with_photos(owner, tmp_path)
    _log_in(page, live_server, owner)
    urls = [reverse("generation-new"), reverse("gallery"), reverse("subject-list"), subject.get_absolute_url(), run.get_absolute_url(),
            image.generation.get_absolute_url(), image.get_absolute_url(), reverse("api-account"), reverse("password_change")]
    widths, header_ends = {}, {}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for url in urls:
        page.goto(live_server.url + url)
        widths[url] = page.evaluate("document.documentElement.scrollWidth")
        # The header's last item (Log out) is on screen, not pushed off its right edge.
        box = page.locator(".topbar .account button").bounding_box()
        header_ends[url] = box["x"] + box["width"]
    page.goto(live_server.url + subject.get_absolute_url())
    page.screenshot(path=str(SCREENSHOTS / "phone-subject.png"), full_page=True)
    page.goto(live_server.url + reverse("generation-new"))
    page.screenshot(path=str(SCREENSHOTS / "phone-generate.png"), full_page=True)
    assert all(width <= PHONE["width"] for width in widths.values()), widths
    assert all(end <= PHONE["width"] for end in header_ends.values()), header_ends


# Whether a select shows its chosen option whole: the option's text, as the select's font draws it,
# plus the select's padding and its arrow (~24 px), fits in the select's box.
SELECTS_CUT_OFF = """() => {
  const ctx = document.createElement('canvas').getContext('2d');
  return [...document.querySelectorAll('select')].filter((s) => s.offsetParent !== null).map((s) => {
    const style = getComputedStyle(s);
    ctx.font = style.font;
    const widest = Math.max(...[...s.options].map((o) => ctx.measureText(o.text).width));
    const room = s.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 24;
    const lineRoom = s.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    return {name: s.name, widest: Math.round(widest), room: Math.round(room), tallEnough: lineRoom >= parseFloat(style.fontSize)};
  }).filter((s) => s.widest > s.room || !s.tallEnough);
}"""


@pytest.mark.django_db(transaction=True)
def test_selects_show_their_whole_choice(live_server, browser_page, django_user_model, tmp_path):
    from django.urls import reverse

    page = browser_page
    owner = django_user_model.objects.create_user("owner", password="a-long-enough-passphrase-42")
    subject, _ = _subject_with_photos(owner, tmp_path)
    subject.runs.update(base_family="sd1")
    _log_in(page, live_server, owner)
    cut_off = {}
    for width in (1100, PHONE["width"]):
        page.set_viewport_size({"width": width, "height": 900})
        for url in (reverse("generation-new"), subject.get_absolute_url()):
            page.goto(live_server.url + url)
            if page.locator("details").count():
                page.locator("details summary").first.click()  # the advanced options, where Prior target is
            if found := page.evaluate(SELECTS_CUT_OFF):
                cut_off[(width, url)] = found
            page.screenshot(path=str(SCREENSHOTS / f"selects-{width}-{url.strip('/').replace('/', '-') or 'generate'}.png"), full_page=True)
    assert not cut_off, cut_off


@pytest.mark.django_db(transaction=True)
def test_reloading_after_an_upload_uploads_nothing_again(live_server, browser_page, django_user_model, tmp_path):
    from playwright.sync_api import expect

    from training.models import Subject

    page = browser_page
    owner = django_user_model.objects.create_user("owner", password="a-long-enough-passphrase-42")
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    _log_in(page, live_server, owner)
    page.goto(live_server.url + subject.get_absolute_url())
    files = _photo_files(tmp_path, 5)
    page.set_input_files("input[type=file][name=photos]", [*files, files[0]])  # one chosen twice
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".flash").first).to_contain_text("Received 5 photos")
    expect(page.locator(".flash")).to_contain_text(["Received 5 photos", "photo0.jpg: already uploaded"])
    assert page.url == live_server.url + subject.get_absolute_url()  # redirected: the address is the subject page's
    page.reload()
    expect(page.locator("#photos .tile")).to_have_count(5)
    assert subject.photos.count() == 5
    expect(page.locator(".flash")).to_have_count(0)  # messages are shown once


@pytest.mark.django_db(transaction=True)
def test_remove_asks_first_and_a_dismissed_question_keeps_the_photo(live_server, browser_page, django_user_model, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    owner = django_user_model.objects.create_user("owner", password="a-long-enough-passphrase-42")
    subject, _ = _subject_with_photos(owner, tmp_path)
    subject.runs.all().delete()
    _log_in(page, live_server, owner)
    page.goto(live_server.url + subject.get_absolute_url())
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.locator("#photos .tile button.danger").first.click()
    expect(page.locator("#photos .tile")).to_have_count(3)
    assert questions == ["Remove this photo?"] and subject.photos.count() == 3
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#photos .tile button.danger").first.click()
    expect(page.locator("#photos .tile")).to_have_count(2)
    assert subject.photos.count() == 2


@pytest.mark.django_db(transaction=True)
def test_gallery_search_finds_every_word_and_tiles_show_whole_images(live_server, browser_page, django_user_model):
    from django.core.files.base import ContentFile
    from playwright.sync_api import expect

    from .factories import make_image, png_bytes

    page = browser_page
    owner = django_user_model.objects.create_user("owner", password="a-long-enough-passphrase-42")
    heart = make_image(owner, prompt="a white heart on a green background")
    heart.thumbnail.save("wide.png", ContentFile(png_bytes((250, 250, 250), (96, 48))))  # a wide image's thumbnail
    make_image(owner, prompt="a green circle on a white background")
    _log_in(page, live_server, owner)
    page.goto(f"{live_server.url}/gallery/")
    page.fill("input[name=q]", "Green HEART")
    page.get_by_role("button", name="Search").click()
    tiles = page.locator(".gallery a.tile")
    expect(tiles).to_have_count(1)
    expect(tiles).to_have_attribute("title", heart.generation.prompt)
    assert _image_loaded(page, ".gallery a.tile img")
    # The whole 96×48 thumbnail is drawn in its square tile: letterboxed, not cropped to the middle.
    assert page.eval_on_selector(".gallery a.tile img", "img => getComputedStyle(img).objectFit") == "contain"
    page.screenshot(path=str(SCREENSHOTS / "gallery-search.png"), full_page=True)


def test_reuse_seed_on_the_fourth_image_fills_its_own_seed_and_one_image(live_server, browser_page, django_user_model):
    """AUTOMATIC1111's reuse-seed: the 4th image of a 4-image job made with seed 740 is seed 743, alone."""
    from playwright.sync_api import expect

    from imagesite.jobs import JobStatus

    from .factories import make_generation, make_image

    page = browser_page
    owner = django_user_model.objects.create_user("owner", password="a-long-enough-passphrase-42")
    job = make_generation(owner, status=JobStatus.SUCCEEDED, seed=740, num_images=4, prompt="a yellow star on a purple background")
    images = [make_image(owner, generation=job) for _ in range(4)]
    for index, image in enumerate(images):
        type(image).objects.filter(pk=image.pk).update(seed=740 + index)
    _log_in(page, live_server, owner)
    page.goto(f"{live_server.url}/images/{images[3].pk}/")
    page.get_by_role("link", name="Reuse seed").first.click()
    expect(page.locator("#id_seed")).to_have_value("743")
    expect(page.locator("#id_num_images")).to_have_value("1")
    expect(page.locator("#id_prompt")).to_have_value("a yellow star on a purple background")
