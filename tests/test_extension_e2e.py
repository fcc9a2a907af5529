"""The browser extension end to end: real Chromium with the packaged extension loaded, a real `mesoscan serve --dev`
gateway and test pages playing the shared clips, all on 127.0.0.1.

The toolbar button is clicked through CDP (`Extensions.triggerAction`, as a user's click: it grants `activeTab` on
the page), then the popup is opened in a tab for the page's tab id, as Playwright's extension docs do. What the
popup shows is checked against the gateway's own document for the scan. Screenshots land in reports/extension/
(ignored by git).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from tests.conftest import ROOT, VIDEOS_DIR, require_shared
from tests.support.browser import assert_clean, extension_context, watch
from tests.support.extension import Browser, DevGateway, build_extension, chrome_extension_id
from tests.support.media_server import MediaServer
from tests.support.server_stack import free_port, service_env, start_gateway, wait_for

pytestmark = pytest.mark.slow

CLIP = "ffpp_004.mp4"
SHOTS = ROOT / "reports" / "extension"
LABEL_WORDS = {
    "fake": "Likely manipulated",
    "real": "No sign of manipulation found",
    "uncertain": "Cannot tell",
    "no_face": "No face to judge",
}
BADGE_TEXT = {"fake": "FAKE", "real": "OK", "uncertain": "?", "no_face": "–"}


# --- servers -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Iterator[MediaServer]:
    text = tmp_path_factory.mktemp("not-video") / "text.mp4"
    text.write_text("This is a text file with a video's name.\n" * 20)
    files = {CLIP: require_shared(VIDEOS_DIR) / CLIP, "text.mp4": text}
    with MediaServer(files=files) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, media) -> Iterator[DevGateway]:
    dev = DevGateway(tmp_path_factory.mktemp("dev-gateway"), [media.netloc]).start()
    try:
        yield dev
    finally:
        dev.service.stop()


@pytest.fixture(scope="module")
def extension_dir(tmp_path_factory) -> Path:
    return build_extension(tmp_path_factory.mktemp("extension"))


@pytest.fixture(scope="module")
def browser(extension_dir) -> Iterator[Browser]:
    expected = chrome_extension_id(extension_dir)
    with extension_context(extension_dir, extra_args=("--enable-unsafe-extension-debugging",)) as context:
        b = Browser(context, expected)
        assert b.worker().url.startswith(f"chrome-extension://{expected}/"), "the computed extension id is wrong"
        yield b


def video_page(browser: Browser, url: str):
    page = browser.context.new_page()
    watch(page)
    page.goto(url)
    page.wait_for_function(
        "document.querySelector('video') && document.querySelector('video').readyState >= 1", timeout=15_000
    )
    return page


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def scan_id_of(popup) -> str:
    href = popup.locator("a.report").first.get_attribute("href")
    return urllib.parse.urlsplit(href).path.rstrip("/").rsplit("/", 1)[1]


def check_against_document(popup, result: dict) -> None:
    """The popup shows the gateway's document: label, people, timeline points and face crops."""
    verdict = popup.locator(".verdict")
    label = result["verdict"]["label"]
    assert verdict.get_attribute("data-label") == label
    assert popup.locator(".verdict-title").inner_text() == LABEL_WORDS[label]
    if result["verdict"]["fake_probability"] is not None:
        assert popup.locator(".fake-pct").inner_text() == f"{round(result['verdict']['fake_probability'] * 100)} %"
    assert popup.locator(".model").inner_text() == f"{result['model']['name']} v{result['model']['version']}"
    shown = sorted(int(p) for p in popup.locator("li.person").evaluate_all("els => els.map(e => e.dataset.pct)"))
    assert shown == sorted(round(p["fake_probability"] * 100) for p in result["people"])
    points = popup.locator("circle.point").evaluate_all(
        "els => els.map(e => [Number(e.dataset.t), Number(e.dataset.pct)])"
    )
    expected = [
        [p["t"], round(p["fake_probability"] * 100)] for p in result["timeline"] if p["fake_probability"] is not None
    ]
    assert [[round(t, 3), pct] for t, pct in points] == [[round(t, 3), pct] for t, pct in expected]
    assert popup.locator("svg.timeline line.threshold").count() == 1
    assert popup.locator("svg.timeline rect.band").count() == 1
    assert popup.locator(".face img").count() == min(6, len(result["top_faces"]))


# --- the tests -----------------------------------------------------------------------------------------------------


def test_popup_scan_shows_the_gateways_verdict_badge_label_and_seeks(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    page = video_page(browser, media.url(f"/page/video/{CLIP}?n=popup"))
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    assert popup.locator(".target-url").inner_text() == media.url(f"/files/{CLIP}")  # the <video>'s own file
    before = len(gateway.scans())
    popup.locator("button.scan").click()
    popup.locator(".verdict").wait_for(timeout=120_000)
    scans = gateway.scans()
    assert len(scans) == before + 1
    assert scans[-1]["url"] == media.url(f"/files/{CLIP}")
    assert scans[-1]["page_url"] == media.url(f"/page/video/{CLIP}?n=popup")

    scan = gateway.scan(scan_id_of(popup))
    assert scan["status"] == "done" and scan["id"] == scans[-1]["id"]
    result = scan["result"]
    check_against_document(popup, result)
    assert popup.locator(".error").count() == 0
    assert scan["report_url"].startswith(f"{gateway.base}/scans/{scan['id']}")
    assert popup.locator("a.report").get_attribute("href") == scan["report_url"]  # with the submitter's page
    label = result["verdict"]["label"]
    assert browser.badge(tab) == BADGE_TEXT[label]

    # the on-page label: next to the video, above it (never over the player's controls), dismissible
    text = page.locator("#mesoscan-verdict-label .text")
    text.wait_for(timeout=10_000)
    assert text.inner_text() == f"MesoScan: {LABEL_WORDS[label]}"
    link = page.locator("#mesoscan-verdict-label a")
    assert link.get_attribute("href") == scan["report_url"]
    box = page.locator("#mesoscan-verdict-label .box").bounding_box()
    video = page.locator("video").bounding_box()
    assert box["y"] + box["height"] <= video["y"] + 1 or box["y"] + box["height"] < video["y"] + video["height"] - 40
    shot(popup, "popup-verdict")
    shot(page, "page-label")

    # a click on a timeline point moves the page's video there
    point = popup.locator("circle.point").nth(popup.locator("circle.point").count() // 2)
    t = float(point.get_attribute("data-t"))
    assert t > 0.5 and page.evaluate("document.querySelector('video').currentTime") == 0
    point.click()
    try:
        wait_for(
            lambda: abs(page.evaluate("document.querySelector('video').currentTime") - t) < 0.05,
            5,
            what="the video to seek",
        )
    finally:
        print(
            "seek status:",
            popup.locator(".seek-status").inner_text(),
            page.evaluate("document.querySelector('video').currentTime"),
            t,
        )
    assert popup.locator(".seek-status").inner_text().startswith("Moved the video to")
    page.locator("#mesoscan-verdict-label button.close").click()
    assert page.locator("#mesoscan-verdict-label").count() == 0
    assert_clean(page)
    assert_clean(popup)
    popup.close()

    # seen before: a second visit shows the verdict at once and asks the gateway nothing new
    page.goto(media.url(f"/page/video/{CLIP}?n=popup"))
    assert browser.badge(tab) == ""
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    popup.locator(".verdict").wait_for(timeout=5_000)
    assert "Seen before" in popup.locator(".seen-before").inner_text()
    check_against_document(popup, result)
    assert popup.locator("button.scan").inner_text() == "Rescan"
    # the side panel shows the same for the tab
    panel = browser.context.new_page()
    watch(panel)
    panel.goto(f"{browser.origin}/sidepanel.html?tab={tab}")
    panel.locator(".verdict").wait_for(timeout=5_000)
    check_against_document(panel, result)
    assert panel.locator("body[data-mode=panel]").count() == 1 and panel.locator(".open-panel").count() == 0
    time.sleep(1)
    assert len(gateway.scans()) == before + 1
    assert_clean(popup)
    assert_clean(panel)
    panel.close()
    popup.close()
    page.close()


def test_a_blob_video_sends_the_page_url(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base, overlay=False)
    page = browser.context.new_page()
    watch(page)
    page.goto(media.url(f"/page/blob/{CLIP}"))
    page.wait_for_function("document.querySelector('video').currentSrc.startsWith('blob:')", timeout=15_000)
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    page_url = media.url(f"/page/blob/{CLIP}")
    assert popup.locator(".target-url").inner_text() == page_url
    popup.locator("button.scan").click()
    popup.locator(".verdict, .error").first.wait_for(timeout=120_000)
    last = gateway.scans()[-1]
    assert last["url"] == page_url and last["page_url"] == page_url  # never the blob: URL
    assert popup.locator(".verdict").count() == 1, popup.locator("main").inner_text()
    time.sleep(1)
    assert page.locator("#mesoscan-verdict-label").count() == 0  # the on-page label is off in the settings
    assert_clean(page)
    assert_clean(popup)
    popup.close()
    page.close()


def test_the_scan_ends_with_the_popup_closed_and_the_worker_killed(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    slow = media.url(f"/drip/{CLIP}?chunk=8192&every=0.2")  # about 4.5 s of download
    page = video_page(browser, media.url(f"/page/embed?src={requests.utils.quote(slow, safe='')}"))
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    popup.locator("button.scan").click()
    popup.locator(".progress").wait_for(timeout=10_000)
    # the worker's stage and fraction, in words
    stage = popup.locator(".progress .stage")
    wait_for(
        lambda: re.fullmatch(r"Downloading the video · \d+ %", stage.inner_text()),
        20,
        interval=0.05,
        what="the download's progress",
    )
    assert browser.badge(tab) == "…"
    popup.close()
    workers = [t for t in browser.targets("service_worker") if t["url"].startswith(browser.origin)]
    assert workers, "no service worker to kill"
    for target in workers:
        browser.cdp.send("Target.closeTarget", {"targetId": target["targetId"]})
    wait_for(
        lambda: not [t for t in browser.targets("service_worker") if t["targetId"] == workers[0]["targetId"]],
        5,
        what="the worker to stop",
    )
    assert browser.tab_state(tab)["state"] == "running"  # it was killed mid-scan

    state = wait_for(
        lambda: (s := browser.tab_state(tab)) and s["state"] != "running" and s,
        120,
        interval=0.5,
        what="the woken worker to finish the scan",
    )
    assert state["state"] == "done" and state["scan"]["status"] == "done", state
    assert browser.badge(tab) == BADGE_TEXT[state["scan"]["result"]["verdict"]["label"]]
    key = f"verdict:default|{media.url('/drip/' + CLIP + '?chunk=8192&every=0.2')}"
    stored = browser.evaluate(f"chrome.storage.local.get({json.dumps(key)}).then(s => s[{json.dumps(key)}] ?? null)")
    assert stored and stored["scan"]["id"] == state["scanId"]
    page.locator("#mesoscan-verdict-label .text").wait_for(timeout=10_000)
    page.close()


def test_a_player_in_a_cross_origin_frame_cannot_be_seeked_and_says_so(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    answer = requests.post(
        f"{gateway.base}/api/v1/scans", json={"url": media.url(f"/files/{CLIP}?n=frame")}, timeout=10
    )
    scan = wait_for(
        lambda: (s := gateway.scan(answer.json()["id"]))["status"] in ("done", "failed") and s,
        120,
        interval=0.3,
        what="a verdict to show",
    )
    with MediaServer(files={CLIP: require_shared(VIDEOS_DIR) / CLIP}) as other:  # another port: another origin
        framed = other.url(f"/page/video/{CLIP}")
        page = browser.context.new_page()
        watch(page)
        page.goto(media.url(f"/page/frame?src={urllib.parse.quote(framed, safe='')}"))
        player = page.frame(url=framed)
        player.wait_for_function("() => document.querySelector('video').readyState >= 1", timeout=15_000)
        # the page's verdict is in the cache (the extension cannot read the frame: it would scan the page itself)
        browser.evaluate(f"""import("/src/urls.js").then(({{ normalizeUrl }}) => chrome.storage.local.set({{
            ["verdict:default|" + normalizeUrl({json.dumps(page.url)})]:
              {{ savedAt: Date.now(), scan: {json.dumps(scan)}, gatewayUrl: {json.dumps(gateway.base)} }} }}))""")
        tab = browser.click_action(page)
        popup = browser.popup(tab)
        popup.locator(".verdict").wait_for(timeout=5_000)
        assert popup.locator(".target-url").inner_text() == page.url
        popup.locator("circle.point").nth(1).click()
        status = popup.locator(".seek-status")
        wait_for(lambda: status.inner_text(), 5, what="the seek's answer")
        assert status.inner_text().startswith("The page's player cannot be reached")
        assert player.evaluate("document.querySelector('video').currentTime") == 0
        assert_clean(popup)
        popup.close()
        page.close()


def test_stop_waiting_leaves_the_scan_to_the_gateway(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    slow = media.url(f"/drip/{CLIP}?chunk=8192&every=0.15")
    page = video_page(browser, media.url(f"/page/embed?src={requests.utils.quote(slow, safe='')}"))
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    popup.locator("button.scan").click()
    popup.locator(".progress").wait_for(timeout=10_000)
    scan_id = wait_for(lambda: (browser.tab_state(tab) or {}).get("scanId"), 10, what="the scan to be queued")
    popup.locator("button.cancel").click()
    popup.locator("button.scan").wait_for(timeout=5_000)
    assert popup.locator(".note").inner_text().startswith("You stopped waiting")
    assert browser.tab_state(tab)["state"] == "cancelled" and browser.badge(tab) == ""
    done = wait_for(
        lambda: (s := gateway.scan(scan_id))["status"] in ("done", "failed") and s,
        120,
        interval=0.5,
        what="the gateway to finish the scan anyway",
    )
    assert done["status"] == "done"
    time.sleep(2)  # the worker no longer waits for it: no badge, no label
    assert browser.tab_state(tab)["state"] == "cancelled" and browser.badge(tab) == ""
    assert page.locator("#mesoscan-verdict-label").count() == 0
    assert_clean(popup)
    popup.close()
    page.close()


def test_options_list_the_gateways_models_test_and_save(browser, gateway):
    browser.reset(gatewayUrl=f"http://127.0.0.1:{free_port()}")
    options = browser.context.new_page()
    watch(options)
    options.goto(f"{browser.origin}/options.html")
    assert options.locator("#apiKey").get_attribute("type") == "password"
    options.locator("#test").click()
    wait_for(
        lambda: options.locator("#status").inner_text().startswith("The gateway cannot be reached"),
        10,
        what="the unreachable gateway's words",
    )
    models = requests.get(f"{gateway.base}/api/v1/models", timeout=5).json()
    options.locator("#gatewayUrl").fill(gateway.base + "/")
    options.locator("#apiKey").fill("secret-key-1")  # a key the gateway does not know (open mode refuses it too)
    options.locator("#test").click()
    wait_for(
        lambda: options.locator("#status").inner_text().startswith("The API key was refused"),
        10,
        what="the refused key's words",
    )
    options.locator("#apiKey").fill("")
    options.locator("#test").click()
    wait_for(lambda: options.locator("#status").inner_text().startswith("Connected"), 10, what="Test connection")
    options.locator("#apiKey").fill("secret-key-1")
    assert (
        f"offers {len(models['models'])} models (default: {models['default']})"
        in options.locator("#status").inner_text()
    )
    values = options.locator("#model option").evaluate_all("os => os.map(o => o.value)")
    assert values == ["", *[m["name"] for m in models["models"]]]
    assert models["default"] in options.locator("#model option").first.inner_text()
    options.locator("#model").select_option("mesoinception4_dfdc")
    options.locator("#overlay").uncheck()
    options.locator("#save").click()
    wait_for(lambda: options.locator("#status").inner_text() == "Saved.", 5, what="Save")
    saved = browser.evaluate("chrome.storage.local.get('settings').then(s => s.settings)")
    assert saved == {
        "gatewayUrl": gateway.base,
        "apiKey": "secret-key-1",
        "model": "mesoinception4_dfdc",
        "overlay": False,
    }
    assert browser.evaluate("chrome.storage.sync.get(null)") == {}  # never synced
    options.reload()
    assert options.locator("#gatewayUrl").input_value() == gateway.base
    wait_for(lambda: options.locator("#model").input_value() == "mesoinception4_dfdc", 5, what="the saved model")
    assert not options.locator("#overlay").is_checked()
    shot(options, "options")
    assert not options.remote_requests
    options.close()


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in gateway that answers CORS like the real one and records every request's headers."""

    seen: ClassVar[list[tuple[str, str, dict]]] = []

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: bytes = b"") -> None:
        self.seen.append((self.command, self.path, dict(self.headers)))
        self.send_response(200 if body or self.command == "OPTIONS" else 404)
        self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", ""))
        self.send_header("Access-Control-Allow-Headers", "Content-Type, X-API-Key")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_OPTIONS(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        models = {
            "models": [
                {
                    "name": "m",
                    "architecture": "Meso-4",
                    "version": 1,
                    "threshold": 0.5,
                    "licence": "x",
                    "description": "",
                    "members": [],
                    "default": True,
                }
            ],
            "default": "m",
        }
        self._answer(json.dumps({"status": "ok"} if self.path == "/healthz" else models).encode())


def test_requests_carry_the_key_in_its_header_and_no_cookies(browser):
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    browser.context.add_cookies([{"name": "session", "value": "do-not-send", "domain": "127.0.0.1", "path": "/"}])
    try:
        browser.reset(gatewayUrl=base, apiKey="k-secret")
        options = browser.context.new_page()
        options.goto(f"{browser.origin}/options.html")
        options.locator("#test").click()
        wait_for(lambda: options.locator("#status").inner_text().startswith("Connected"), 10, what="Test connection")
        options.close()
    finally:
        server.shutdown()
        browser.context.clear_cookies()
    gets = [(path, headers) for method, path, headers in _Recorder.seen if method == "GET"]
    assert {path for path, _ in gets} == {"/healthz", "/api/v1/models"}
    for method, path, headers in _Recorder.seen:
        assert "cookie" not in {k.lower() for k in headers}, (method, path, headers)
        assert "k-secret" not in path
    assert all({k.lower(): v for k, v in h.items()}.get("x-api-key") == "k-secret" for _, h in gets)


def test_context_menu_is_made_at_install_and_scans_the_video_source(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    page = video_page(browser, media.url(f"/page/video/{CLIP}?n=menu"))
    tab = browser.click_action(page)
    worker = browser.worker()
    # the menu exists in a worker that never had a popup open (it was made in onInstalled, kept by the browser)
    assert worker.evaluate(
        "new Promise(r => chrome.contextMenus.update(mesoscan.MENU_ID, {}, () => r(!chrome.runtime.lastError)))"
    )
    worker.evaluate(f"""mesoscan.onMenuClick({{menuItemId: mesoscan.MENU_ID, mediaType: "video",
        srcUrl: {json.dumps(media.url("/files/" + CLIP))}, pageUrl: {json.dumps(page.url)}}},
        {{id: {tab}, url: {json.dumps(page.url)}}})""")
    state = wait_for(
        lambda: (s := browser.tab_state(tab)) and s["state"] != "running" and s,
        120,
        interval=0.3,
        what="the menu's scan",
    )
    assert state["url"] == media.url(f"/files/{CLIP}") and state["state"] == "done"
    page.close()


# --- errors: each shows its words and no verdict ------------------------------------------------------------------


def expect_error(browser: Browser, page, title: str, hint_part: str, name: str | None = None):
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    popup.locator("button.scan").click()
    error = popup.locator(".error")
    error.wait_for(timeout=120_000)
    assert popup.locator(".error-title").inner_text() == title
    assert hint_part in popup.locator(".error-hint").inner_text()
    assert popup.locator(".verdict").count() == 0 and popup.locator(".fake-pct").count() == 0
    assert browser.badge(tab) == "ERR"
    if name:
        shot(popup, name)
    assert_clean(popup)
    popup.close()


def test_gateway_down(browser, media):
    down = f"http://127.0.0.1:{free_port()}"
    browser.reset(gatewayUrl=down)
    page = video_page(browser, media.url(f"/page/video/{CLIP}?n=down"))
    expect_error(browser, page, "The gateway cannot be reached", f"Nothing answered at {down}", "popup-gateway-down")
    page.close()


def test_not_a_video(browser, gateway, media):
    browser.reset(gatewayUrl=gateway.base)
    page = browser.context.new_page()
    watch(page)
    page.goto(media.url("/page/video/text.mp4"))
    expect_error(browser, page, "This is not a video", "no video stream")
    assert gateway.scans()[-1]["url"] == media.url("/files/text.mp4")
    page.close()


@pytest.fixture(scope="module")
def keyed_gateway(browser, media, pg_url, stack_redis, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A production gateway (gunicorn, keys on, PostgreSQL, Redis) that lets this extension in by
    MESOSCAN_EXTENSION_ORIGIN (a list): (its base URL, a key limited to one scan a minute)."""
    from server.db import session_scope
    from server.keys import create_key

    queue = "mesoscan.extension-tests"
    env = service_env(
        pg_url,
        stack_redis.url,
        MESOSCAN_QUEUE=queue,
        MESOSCAN_GATEWAY_WORKERS="1",
        MESOSCAN_NETWORK_ALLOWLIST=json.dumps([media.netloc]),
        MESOSCAN_EXTENSION_ORIGIN=f"moz-extension://0b5f3a5e-1c1d-4e4e-9a9a-123456789abc, {browser.origin}",
    )
    with session_scope(pg_url) as session:
        limited = create_key(session, "extension 429", rate_limit="1/minute").key
    gateway, base = start_gateway(env, tmp_path_factory.mktemp("keyed-gateway"))
    try:
        yield base, limited
    finally:
        gateway.stop()
        stack_redis.client().delete(queue)


def test_wrong_key(browser, keyed_gateway, media):
    base, _ = keyed_gateway
    browser.reset(gatewayUrl=base, apiKey="not-a-key")
    page = video_page(browser, media.url(f"/page/video/{CLIP}?n=key"))
    expect_error(browser, page, "The API key was refused", "Enter a valid key in Settings", "popup-wrong-key")
    page.close()


def test_rate_limited(browser, keyed_gateway, media):
    base, limited = keyed_gateway
    first = requests.post(
        f"{base}/api/v1/scans",
        json={"url": media.url(f"/files/{CLIP}?n=429")},
        headers={"X-API-Key": limited},
        timeout=10,
    )
    assert first.status_code == 202, first.text  # the key's one scan this minute
    browser.reset(gatewayUrl=base, apiKey=limited)
    page = video_page(browser, media.url(f"/page/video/{CLIP}?n=429"))
    expect_error(browser, page, "Too many scans for now", "Wait ")
    page.close()
