"""The browser extension under test: packaged and loaded in Chromium, clicked as a user clicks, beside a real
`mesoscan serve --dev` gateway. Shared by tests/test_extension_e2e.py and tests/bench/bench_extension.py.

- `build_extension(out)`: `extension/package.py` into `out`; returns the Chromium folder.
- `chrome_extension_id(path)`: the id Chromium gives an unpacked extension in that folder.
- `DevGateway(tmp, allow, **env)`: `mesoscan serve --dev` on a free loopback port, SQLite in `tmp` (its scans
  readable), fetching videos from the `host:port`s in `allow` only.
- `Browser(context, id)`: clicks the toolbar button through CDP (`Extensions.triggerAction`, which grants
  `activeTab` as a real click does), opens the popup in a tab for a page's tab id, reads badges and storage from an
  extension page (which does not wake the service worker).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import requests

from tests.conftest import ROOT
from tests.support.browser import watch
from tests.support.server_stack import Service, free_port, service_env, wait_for


def chrome_extension_id(path: Path) -> str:
    """Chromium's id for an unpacked extension: its absolute path's sha256, first 32 hex digits written a–p."""
    import hashlib

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)


def build_extension(out: Path) -> Path:
    import subprocess

    subprocess.run(
        [sys.executable, str(ROOT / "extension" / "package.py"), "--out", str(out)], check=True, capture_output=True
    )
    return out / "chrome"


class DevGateway:
    def __init__(self, tmp: Path, allow: list[str], **extra_env: str):
        """`allow`: the `host:port` it may fetch videos from (the media servers); every other address stays blocked."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.db = tmp / "dev.db"
        extra_env.setdefault("MESOSCAN_NETWORK_ALLOWLIST", json.dumps(allow))
        env = service_env(f"sqlite:///{self.db}", "memory://", **extra_env)  # --dev keeps its own queue in memory
        self.service = Service(
            "dev gateway",
            [sys.executable, "-m", "server.cli", "serve", "--dev", "--port", str(self.port)],
            env,
            tmp / "dev.log",
        )

    def start(self) -> DevGateway:
        self.service.start()

        def up() -> bool:
            self.service.check_alive()
            try:
                return requests.get(f"{self.base}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(up, 90, interval=0.2, what="mesoscan serve --dev")
        return self

    def scans(self) -> list[dict]:
        """Every scan record, oldest first, with the page URL of its latest submission."""
        query = (
            "SELECT s.id, s.url, (SELECT page_url FROM submissions b WHERE b.scan_id = s.id "
            "ORDER BY b.created_at DESC LIMIT 1) FROM scans s ORDER BY s.created_at"
        )
        with sqlite3.connect(self.db) as db:
            return [{"id": r[0], "url": r[1], "page_url": r[2]} for r in db.execute(query)]

    def scan(self, scan_id: str) -> dict:
        return requests.get(f"{self.base}/api/v1/scans/{scan_id}", timeout=5).json()


class Browser:
    """The persistent context with the extension, plus what the tests do with it."""

    def __init__(self, context, extension_id: str):
        self.context = context
        self.id = extension_id
        self.cdp = context.browser.new_browser_cdp_session()
        self.origin = f"chrome-extension://{extension_id}"

    def worker(self):
        live = [w for w in self.context.service_workers if w.url.startswith(self.origin)]
        return live[-1] if live else self.context.wait_for_event("serviceworker", timeout=20_000)

    def targets(self, kind: str | None = None) -> list[dict]:
        params = {"filter": [{"type": kind}]} if kind else {}
        return self.cdp.send("Target.getTargets", params)["targetInfos"]

    def ext_page(self, path: str = "options.html"):
        page = self.context.new_page()
        page.goto(f"{self.origin}/{path}")
        return page

    def evaluate(self, expression: str):
        """Runs in an extension page (it does not wake the service worker, which tests may have stopped)."""
        if not hasattr(self, "_helper") or self._helper.is_closed():
            self._helper = self.ext_page("options.html")
        return self._helper.evaluate(expression)

    def reset(self, **settings) -> None:
        values = {"gatewayUrl": "http://127.0.0.1:8000", "apiKey": "", "model": "", "overlay": True} | settings
        self.evaluate(
            f"chrome.storage.local.clear().then(() => chrome.storage.local.set({{settings: {json.dumps(values)}}}))"
            ".then(() => chrome.storage.session.clear())"
        )

    def click_action(self, page) -> int:
        """Clicks the toolbar button on `page`'s tab (grants activeTab as a user's click does); returns the tab id.
        The popup that opens is closed again: tests open it in a tab of its own."""
        url = page.url
        before = {t["targetId"] for t in self.targets("page")}
        tab = next(t for t in self.targets("tab") if t["url"] == url)
        self.cdp.send("Extensions.triggerAction", {"id": self.id, "targetId": tab["targetId"]})

        def opened():
            return [
                t
                for t in self.targets("page")
                if t["url"].startswith(f"{self.origin}/popup.html") and t["targetId"] not in before
            ]

        for target in wait_for(opened, 10, what="the action's popup"):
            self.cdp.send("Target.closeTarget", {"targetId": target["targetId"]})
        ids = wait_for(
            lambda: self.evaluate(
                f"chrome.tabs.query({{}}).then(ts => ts.filter(t => t.url === {json.dumps(url)}).map(t => t.id))"
            ),
            5,
            what="the tab's id",
        )
        return ids[0]

    def popup(self, tab_id: int):
        page = self.context.new_page()
        watch(page)
        page.goto(f"{self.origin}/popup.html?tab={tab_id}")
        return page

    def badge(self, tab_id: int) -> str:
        return self.evaluate(f"chrome.action.getBadgeText({{tabId: {tab_id}}})")

    def tab_state(self, tab_id: int) -> dict | None:
        return self.evaluate(f"chrome.storage.session.get('tab:{tab_id}').then(s => s['tab:{tab_id}'] ?? null)")
