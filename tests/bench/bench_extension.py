"""Extension benchmark (not a test): the click-to-verdict time against the scan's own time, popup first paint, size.

    python -m tests.bench.bench_extension [--repeats 1] [--frames 32] [--paints 20]

Real Chromium with the packaged extension, a `mesoscan serve --dev` gateway (verdict reuse off, so every click is
a real scan) and a media server over the shared clips, all on 127.0.0.1. For each clip: the popup's Scan button is
clicked and the time until the verdict is drawn is taken inside the popup (`performance.now()` at the click and
when the verdict's node appears); the extension's overhead is that time minus the gateway document's
`timings_ms.total` (fetch, decode, detect, classify). The overhead also holds the gateway's own queueing (its
record's `created_at` → `finished_at` beyond `total` is shown apart). Targets: overhead ≤ 0.5 s at the median;
popup first paint < 100 ms. Writes bench/results/extension.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from pathlib import Path

from tests.conftest import VIDEOS_DIR, require_shared
from tests.support.browser import extension_context
from tests.support.extension import Browser, DevGateway, build_extension, chrome_extension_id
from tests.support.media_server import MediaServer
from tests.support.server_stack import wait_for

CLICK_AND_WATCH = """() => new Promise((resolve) => {
  const started = performance.now();
  const seen = () => document.querySelector('.verdict, .error');
  const observer = new MutationObserver(() => {
    if (!seen()) return;
    observer.disconnect();
    resolve({ms: performance.now() - started, error: !!document.querySelector('.error')});
  });
  observer.observe(document.body, {childList: true, subtree: true});
  document.querySelector('button.scan').click();
})"""


def iso_ms(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000


def scan_clip(browser: Browser, gateway: DevGateway, media: MediaServer, clip: str, repeat: int) -> dict:
    browser.reset(gatewayUrl=gateway.base)
    page = browser.context.new_page()
    page.goto(media.url(f"/page/video/{clip}?repeat={repeat}"))
    page.wait_for_function("document.querySelector('video').readyState >= 1", timeout=30_000)
    tab = browser.click_action(page)
    popup = browser.popup(tab)
    popup.locator("button.scan").wait_for()
    outcome = popup.evaluate(CLICK_AND_WATCH)
    if outcome["error"]:
        raise RuntimeError(f"{clip}: {popup.locator('main').inner_text()}")
    href = popup.locator("a.report").get_attribute("href")
    scan = gateway.scan(href.split("?")[0].rstrip("/").rsplit("/", 1)[1])
    total = scan["result"]["timings_ms"]["total"]
    in_gateway = iso_ms(scan["finished_at"]) - iso_ms(scan["created_at"])
    popup.close()
    page.close()
    return {
        "clip": clip,
        "click_to_verdict_ms": round(outcome["ms"], 1),
        "scan_total_ms": round(total, 1),
        "overhead_ms": round(outcome["ms"] - total, 1),
        "gateway_queue_ms": round(in_gateway - total, 1),
        "label": scan["result"]["verdict"]["label"],
    }


BLANK = (
    '<!doctype html><html><head><meta charset="utf-8"><title>blank</title></head><body><h1>MesoScan</h1></body></html>'
)
"""An extension page with nothing but a heading (only in the benchmark's copy): the browser's own floor."""
FCP = "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"


def first_paints(browser: Browser, tab: int, count: int) -> tuple[list[float], list[float]]:
    """First contentful paint of the popup (opened for `tab`) and of a blank extension page, interleaved."""
    popup, blank = [], []
    for _ in range(count):
        for path, out in ((f"popup.html?tab={tab}", popup), ("blank.html", blank)):
            page = browser.context.new_page()
            page.goto(f"{browser.origin}/{path}")
            page.wait_for_function(f"() => ({FCP}) !== null", timeout=10_000)
            out.append(round(page.evaluate(FCP), 1))
            page.close()
    return popup, blank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--paints", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/extension.json"))
    args = parser.parse_args()

    clips = {p.name: p for p in sorted(require_shared(VIDEOS_DIR).glob("*.mp4"))}
    with tempfile.TemporaryDirectory(prefix="mesoscan-bench-ext-") as tmp:
        root = Path(tmp)
        extension = build_extension(root / "ext")
        sizes = {p.name: p.stat().st_size for p in (root / "ext").glob("*.zip")}
        unpacked = sum(p.stat().st_size for p in extension.rglob("*") if p.is_file())
        (extension / "blank.html").write_text(BLANK)
        with MediaServer(files=clips) as media:
            gateway = DevGateway(
                root, [media.netloc], MESOSCAN_FRAMES=str(args.frames), MESOSCAN_CACHE_TTL_S="0"
            ).start()
            try:
                import requests

                warm = requests.post(
                    f"{gateway.base}/api/v1/scans",
                    timeout=10,
                    json={"url": media.url(f"/files/{next(iter(clips))}?warm=1")},
                ).json()
                wait_for(
                    lambda: gateway.scan(warm["id"])["status"] in ("done", "failed"),
                    300,
                    interval=0.5,
                    what="the warm-up scan (model load)",
                )
                with extension_context(extension, extra_args=("--enable-unsafe-extension-debugging",)) as context:
                    browser = Browser(context, chrome_extension_id(extension))
                    browser.worker()
                    runs = [scan_clip(browser, gateway, media, clip, r) for r in range(args.repeats) for clip in clips]
                    browser.reset(gatewayUrl=gateway.base)
                    page = context.new_page()
                    page.goto(media.url(f"/page/video/{next(iter(clips))}?paint=1"))
                    paints, floor = first_paints(browser, browser.click_action(page), args.paints)
            finally:
                gateway.service.stop()

    print(
        "| clip | click → verdict (ms) | scan `timings_ms.total` (ms) | overhead (ms) | of which gateway queue (ms) |"
    )
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['clip']} | {r['click_to_verdict_ms']:.0f} | {r['scan_total_ms']:.0f} | {r['overhead_ms']:.0f} "
            f"| {r['gateway_queue_ms']:.0f} |"
        )
    overhead = statistics.median(r["overhead_ms"] for r in runs)
    queue = statistics.median(r["gateway_queue_ms"] for r in runs)
    paint, blank = statistics.median(paints), statistics.median(floor)
    print(
        f"\nmedian overhead {overhead:.0f} ms (target ≤ 500; gateway queueing {queue:.0f} ms of it), "
        f"max {max(r['overhead_ms'] for r in runs):.0f} ms over {len(runs)} scans"
    )
    print(
        f"popup first contentful paint: median {paint:.0f} ms over {len(paints)} opens (target < 100); "
        f"a blank extension page: {blank:.0f} ms"
    )
    print(
        "packed size: "
        + ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in sorted(sizes.items()))
        + f"; unpacked {unpacked / 1024:.1f} KiB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": runs,
                "median_overhead_ms": overhead,
                "median_gateway_queue_ms": queue,
                "first_paints_ms": paints,
                "median_first_paint_ms": paint,
                "zip_bytes": sizes,
                "unpacked_bytes": unpacked,
                "frames": args.frames,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
