"""The web page `/` in real Chromium against the real stack (gunicorn gateway with keys on, a Celery worker, clips
served from 127.0.0.1): a link and a file each become a report, errors show their message, the form works without
JavaScript, and nothing leaves 127.0.0.1 (`guarded_page` fails on any other request and on console errors). The
page's markup and headers are checked in process too (open mode, keys mode, no remote assets, no inline code)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import VIDEOS_DIR, require_shared

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("MESOSCAN_SCREENSHOTS", tempfile.gettempdir())) / "mesoscan-page-shots"
REPORT = re.compile(r"/scans/[A-Za-z0-9_-]+$")


def finish_on_report(page, timeout_s: float = 240) -> None:
    page.wait_for_url(REPORT, timeout=timeout_s * 1000)
    page.wait_for_selector("section.verdict:not(.queued):not(.running)", timeout=timeout_s * 1000)


def sign_in(page, stack) -> None:
    page.goto(f"{stack.base_url}/")
    key = page.get_by_label("API key")
    if key.input_value() != stack.api_key:
        key.fill(stack.api_key)


# --- in Chromium ----------------------------------------------------------------------------------------------------


def test_a_pasted_link_becomes_a_report(server_stack, guarded_page):
    page, stack = guarded_page, server_stack
    url = stack.clip("dfdc_yhffcuhhjy.mp4")
    sign_in(page, stack)
    page.get_by_label("Video link").fill(url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "form.png"), full_page=True)
    page.get_by_role("button", name="Scan").click()
    page.wait_for_selector("#progress:not([hidden])")
    finish_on_report(page)
    assert page.locator(".label").first.inner_text().strip() in (
        "LIKELY FAKE",
        "LIKELY REAL",
        "UNCERTAIN",
        "NO FACE",
        "SCAN FAILED",
    )
    assert url in page.locator(".source").inner_text()
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    scan_id = page.url.rsplit("/", 1)[1]
    api = stack.session().get(f"{stack.base_url}/api/v1/scans/{scan_id}", timeout=5).json()
    assert api["status"] == "done" and api["url"] == url
    # The key was entered once: the next visit in this tab finds it in session storage.
    page.goto(f"{stack.base_url}/")
    assert page.get_by_label("API key").input_value() == stack.api_key
    assert page.evaluate("sessionStorage.getItem('mesoscan.apiKey')") == stack.api_key
    assert all(u.startswith(stack.base_url) or u.startswith(stack.media.url("/")) for u in page.network_log)


def test_a_chosen_file_becomes_a_report(server_stack, guarded_page):
    page, stack = guarded_page, server_stack
    clip = require_shared(VIDEOS_DIR) / "ffpp_519_515_DF.mp4"
    sign_in(page, stack)
    page.get_by_label("Video file").set_input_files(str(clip))
    assert "ffpp_519_515_DF.mp4" in page.locator("#chosen").inner_text()
    page.get_by_role("button", name="Scan").click()
    finish_on_report(page)
    assert page.locator("h1").inner_text() == clip.name
    assert "Uploaded file" in page.locator(".source").inner_text()
    scan_id = page.url.rsplit("/", 1)[1]
    api = stack.session().get(f"{stack.base_url}/api/v1/scans/{scan_id}", timeout=5).json()
    assert api["status"] == "done" and api["upload"]["file_name"] == clip.name
    assert api["result"]["source"]["kind"] == "upload"
    assert not list(stack.upload_dir.iterdir())


def test_errors_show_their_message(server_stack, guarded_page, media_assets):
    page, stack = guarded_page, server_stack
    sign_in(page, stack)
    # A refused URL (a private address): the API's message, in the alert region, and the form usable again.
    page.get_by_label("Video link").fill("http://10.0.0.7/video.mp4")
    page.get_by_role("button", name="Scan").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "blocked" in alert.inner_text().lower() or "not allowed" in alert.inner_text().lower()
    assert page.get_by_role("button", name="Scan").is_enabled()
    # A text file named .mp4: refused by the probe at once, its message shown.
    page.get_by_label("Video link").fill("")
    page.get_by_label("Video file").set_input_files(str(media_assets.files["text.mp4"]))
    page.get_by_role("button", name="Scan").click()
    expect(page.locator("#form-error")).to_contain_text("not a media file")
    # A wrong key: 401's message, and the stored key is forgotten.
    page.get_by_label("API key").fill("msk_wrong")
    page.get_by_label("Video file").set_input_files([])
    page.get_by_label("Video link").fill(stack.clip("ffpp_004.mp4"))
    page.get_by_role("button", name="Scan").click()
    expect(page.locator("#form-error")).to_contain_text("API key")
    assert page.evaluate("sessionStorage.getItem('mesoscan.apiKey')") is None
    # Chromium itself logs each refused request (400, 422, 401) as a console error: exactly those three, nothing
    # from the page's script.
    refused = re.compile(r"^Failed to load resource: the server responded with a status of (400|401|422)\b")
    assert sorted(refused.match(e).group(1) for e in page.console_errors if refused.match(e)) == ["400", "401", "422"]
    page.console_errors[:] = [e for e in page.console_errors if not refused.match(e)]


def test_without_javascript_the_form_posts_and_the_report_refreshes(server_stack, chromium):
    from tests.support.browser import assert_clean, watch

    stack = server_stack
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    watch(page)
    try:
        page.goto(f"{stack.base_url}/")
        page.get_by_label("API key").fill(stack.api_key)
        page.get_by_label("Video link").fill(stack.clip("ffpp_634_660_FS.mp4", query="nojs=1"))
        page.get_by_role("button", name="Scan").click()
        page.wait_for_url(REPORT)
        finish_on_report(page)  # reached through <meta http-equiv="refresh">: no script ran
        assert page.locator("section.verdict").count() == 1
        # An error without JavaScript: the form again, with the message.
        page.goto(f"{stack.base_url}/")
        page.get_by_label("API key").fill(stack.api_key)
        page.get_by_label("Video link").fill("http://169.254.169.254/latest/meta-data/")
        page.get_by_role("button", name="Scan").click()
        assert "blocked" in page.get_by_role("alert").inner_text().lower()
        assert page.get_by_label("Video link").input_value() == "http://169.254.169.254/latest/meta-data/"
        # The refused form comes back as a 400 document, which Chromium logs as a console error: only that one.
        assert page.console_errors == [
            "Failed to load resource: the server responded with a status of 400 (BAD REQUEST)"
        ]
        page.console_errors.clear()
        assert_clean(page)
    finally:
        context.close()


def test_the_page_is_keyboard_usable_readable_on_a_phone_and_has_contrast(server_stack, chromium):
    from tests.support.browser import assert_clean, watch

    stack = server_stack
    context = chromium.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch(page)
    try:
        page.goto(f"{stack.base_url}/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "form-phone.png"), full_page=True)
        # Every control has a label; Tab reaches them in order and Enter submits.
        for label in ("API key", "Video link", "Video file", "Model"):
            assert page.get_by_label(label).count() == 1
        order = []
        for _ in range(6):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        assert order == ["A", "api_key", "url", "file", "model", "scan-button"]  # the home link, then the form
        page.focus("#api_key")
        page.keyboard.type(stack.api_key)
        page.keyboard.press("Tab")
        page.keyboard.type(stack.clip("ffpp_004.mp4"))
        page.keyboard.press("Enter")
        finish_on_report(page)
        ratios = page.evaluate("""() => {
          const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lin = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
          const lum = (c) => { const v = rgb(c).map(lin); return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
          const bg = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                                 if (!c.startsWith('rgba(0, 0, 0, 0)')) return c; } return 'rgb(255, 255, 255)'; };
          return [...document.querySelectorAll('h1, p, dt, dd, td, th, .label, footer, header, code')]
            .filter((el) => el.textContent.trim()).map((el) => {
              const a = lum(getComputedStyle(el).color), b = lum(bg(el));
              return [el.tagName + '.' + el.className, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]; });
        }""")
        low = [(name, round(r, 2)) for name, r in ratios if r < 4.5]
        assert ratios and not low, low
        assert_clean(page)
    finally:
        context.close()


# --- in process: the markup and the headers -------------------------------------------------------------------------


def test_the_form_is_server_rendered_self_contained_and_strict(make_app, tmp_path):
    app = make_app(open_mode=True, upload_dir=tmp_path)
    client = app.test_client()
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "script-src 'self'" in csp
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    html = r.get_data(as_text=True)
    assert 'name="api_key"' not in html  # open mode: no key needed
    assert "<style" not in html and " style=" not in html and re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert re.search(r"""(?:src|href|action)=["'](?:https?:)?//""", html) is None  # nothing remote
    for name in ("url", "file", "model"):
        assert re.search(rf'<label for="{name}">', html) and f'id="{name}"' in html
    assert 'method="post"' in html and 'enctype="multipart/form-data"' in html
    assert "200 MB" in html and "10 min" in html  # the limits are said next to the file field
    for asset in ("/static/scan.js", "/static/mesoscan.css"):
        static = client.get(asset)
        assert static.status_code == 200 and b"http://" not in static.data and b"https://" not in static.data
    keys = make_app(upload_dir=tmp_path).test_client().get("/").get_data(as_text=True)
    assert 'name="api_key"' in keys and 'type="password"' in keys


def test_the_report_page_allows_no_inline_styles_or_scripts(make_app, tmp_path, pg_url):
    from tests.test_server_api import finished_scan, unique_url

    scan_id = finished_scan(pg_url, unique_url("page"))
    r = make_app(upload_dir=tmp_path).test_client().get(f"/scans/{scan_id}")
    csp = r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "script-src" not in csp and "style-src 'self'" in csp
    html = r.get_data(as_text=True)
    assert "<style" not in html and " style=" not in html and "<script" not in html
    assert 'class="bar"' in html  # the people's bars are SVG now, not inline widths


def test_form_posts_count_against_the_same_rate_limit_as_the_api(make_app, tmp_path, pg_url):
    from server.db import session_scope
    from server.keys import create_key
    from tests.test_server_api import unique_url

    with session_scope(pg_url) as session:
        key = create_key(session, "form limits").key
    app = make_app(rate_limit="2/minute", upload_dir=tmp_path)
    client = app.test_client()
    assert client.post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": key}).status_code == 202
    form = client.post("/", data={"api_key": key, "url": unique_url()})
    assert form.status_code == 303 and REPORT.search(form.headers["Location"])
    refused = client.post("/", data={"api_key": key, "url": unique_url()})
    assert refused.status_code == 429 and "too many scans" in refused.get_data(as_text=True)
    assert client.post("/", data={"api_key": "msk_nope", "url": unique_url()}).status_code == 401
    assert client.post("/", data={"url": unique_url()}).status_code == 401  # keys on: no key, no scan
