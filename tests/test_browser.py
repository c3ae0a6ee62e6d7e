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
    # 40 steps keep the job running for a few of the page's 1 s polls even on a fast machine.
    chip = page.locator(".chip[data-prompt]").first
    prompt = chip.get_attribute("data-prompt")
    chip.click()
    expect(page.locator("#id_prompt")).to_have_value(prompt)
    page.fill("#id_steps", "40")
    page.click("button.primary")
    expect(page).to_have_url(re.compile(r"/generations/\d+/$"))
    expect(page.locator("h1.prompt")).to_have_text(prompt)

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
    # 40 steps take seconds on a CPU, so at least one 1 s poll lands mid-render.
    assert any(s.startswith("running") for s in seen), seen
    swapped_running = [s for s in seen[1:] if s.startswith("running")]
    assert all(re.search(r"step \d+ of 40", s) for s in swapped_running), seen
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
