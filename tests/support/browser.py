"""Real Chromium for tests (Debian's `/usr/bin/chromium` driven by Playwright for Python), kept on loopback.

Fixtures: `chromium` (one headless browser per session) and `guarded_page` (a new page whose every request is
checked: any request to a host other than 127.0.0.1, localhost or [::1], or any console error, fails the test at
teardown; `page.network_log` lists the URLs requested). `extension_context(dir)` opens a persistent context with an
unpacked extension loaded. Playwright never downloads a browser here: `executable_path` points at Debian's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MESOSCAN_CHROMIUM", "/usr/bin/chromium")
QUIET_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-default-browser-check",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]
"""Chromium otherwise reaches for the network on its own (updates, sync, safe browsing, translation)."""
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome-extension", "chrome", "devtools", "file"}


def require_chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make setup installs Debian's chromium)")
    return CHROMIUM


def is_local(url: str) -> bool:
    """True for a URL that stays on this machine (loopback hosts, or no network at all)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in {"http", "https", "ws", "wss"} and (parts.hostname or "") in LOOPBACK_HOSTS


_PLAYWRIGHT = None


def playwright():
    """The process' one Playwright driver: the sync API refuses a second one while another runs in the thread
    (a session browser and an extension context in the same run), so all browsers share this one."""
    global _PLAYWRIGHT
    if _PLAYWRIGHT is None:
        from playwright.sync_api import sync_playwright

        _PLAYWRIGHT = sync_playwright().start()
    return _PLAYWRIGHT


@pytest.fixture(scope="session", autouse=True)
def _stop_playwright() -> Iterator:
    yield
    global _PLAYWRIGHT
    if _PLAYWRIGHT is not None:
        _PLAYWRIGHT.stop()
        _PLAYWRIGHT = None


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """A headless Chromium (Playwright `Browser`) for the whole session."""
    executable = require_chromium()
    browser = playwright().chromium.launch(executable_path=executable, headless=True, args=QUIET_ARGS)
    try:
        yield browser
    finally:
        browser.close()


def watch(page) -> None:
    """Record `page`'s requests and console errors in `page.network_log`, `page.remote_requests`,
    `page.console_errors`; remote requests are aborted before they leave."""
    page.network_log, page.remote_requests, page.console_errors = [], [], []

    def route(route) -> None:
        url = route.request.url
        page.network_log.append(url)
        if is_local(url):
            route.continue_()
        else:
            page.remote_requests.append(url)
            route.abort()

    page.route("**/*", route)
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))


def assert_clean(page) -> None:
    assert not page.remote_requests, f"requests left 127.0.0.1: {page.remote_requests}"
    assert not page.console_errors, f"console errors: {page.console_errors}"


@pytest.fixture
def guarded_page(chromium) -> Iterator:
    """A fresh page (own context) that fails the test on a non-loopback request or a console error."""
    context = chromium.new_context()
    page = context.new_page()
    watch(page)
    try:
        yield page
        assert_clean(page)
    finally:
        context.close()


@contextmanager
def extension_context(extension_dir: Path, extra_args: tuple[str, ...] = (), **options) -> Iterator:
    """A persistent Chromium context (own profile, removed afterwards) with the unpacked extension loaded.

    `extra_args` go to Chromium too (e.g. `--enable-unsafe-extension-debugging`, which lets a browser CDP session
    click the extension's toolbar button with `Extensions.triggerAction`)."""
    executable = require_chromium()
    profile = tempfile.mkdtemp(prefix="mesoscan-chromium-")
    ext = str(Path(extension_dir).resolve())
    try:
        context = playwright().chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=[f"--disable-extensions-except={ext}", f"--load-extension={ext}", *QUIET_ARGS, *extra_args],
            **options,
        )
        try:
            yield context
        finally:
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
