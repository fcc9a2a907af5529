"""Benchmark: time to verdict per shared clip, split by stage, against the decode floor.

Run: `python -m tests.bench.bench_scan [--repeats N] [--frames N]` (`make bench` runs it).

For every clip of the shared videos it measures, in one process and with the model already loaded:
- the decode floor: decoding the same sampled frames alone (`scanner.video.sample_frames`);
- a full scan of the local file (decode, detect, classify; `Scanner.scan_file`) with 32 sampled frames;
- the same in key-frame mode;
- a scan through yt-dlp from a local HTTP server (adds the fetch stage).
Medians over the repeats. Targets: scan ≤ 1.3× the floor; key-frame mode ≤ 0.3× the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from scanner.config import ScannerSettings
from scanner.pipeline import Scanner
from scanner.video import index_packets, sample_frames
from serving.config import ServingSettings
from tests.conftest import VIDEOS_DIR
from tests.support.media_server import MediaServer


def median_ms(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument(
        "--compute-threads",
        type=int,
        default=None,
        help="MESOSCAN_COMPUTE_THREADS for the scan and the floor (default: the libraries' own)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/scan.json"))
    args = parser.parse_args()

    clips = sorted(VIDEOS_DIR.glob("*.mp4"))
    staging = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    rows = []
    with MediaServer(files={p.name: p for p in clips}) as server:
        settings = ScannerSettings(
            frames=args.frames,
            temp_dir=staging,
            network_allowlist=[server.netloc],
            compute_threads=args.compute_threads,
        )
        scanner = Scanner(settings, serving_settings=ServingSettings())
        keyframe_scanner = Scanner(settings.model_copy(update={"keyframes": True}), predictor=scanner.predictor)
        scanner.scan_file(clips[0])  # warm up: model, detector, compiled functions
        for clip in clips:
            index = index_packets(clip)
            floor, _ = median_ms(
                lambda c=clip, i=index: sum(
                    1 for _ in sample_frames(c, args.frames, index=i, threads=args.compute_threads)
                ),
                args.repeats,
            )
            scan_ms, doc = median_ms(lambda c=clip: scanner.scan_file(c), args.repeats)
            key_ms, key_doc = median_ms(lambda c=clip: keyframe_scanner.scan_file(c), args.repeats)
            url_ms, url_doc = median_ms(lambda c=clip: scanner.scan_url(server.url(f"/files/{c.name}")), args.repeats)
            assert doc["status"] == key_doc["status"] == url_doc["status"] == "done", doc["error"]
            rows.append(
                {
                    "clip": clip.name,
                    "resolution": f"{doc['source']['width']}x{doc['source']['height']}",
                    "frames_in_video": len(index.pts),
                    "decode_floor_ms": round(floor, 1),
                    "scan_ms": round(scan_ms, 1),
                    "scan_vs_floor": round(scan_ms / floor, 2),
                    "stages_ms": doc["timings_ms"],
                    "keyframes_ms": round(key_ms, 1),
                    "keyframes_frames": key_doc["frames_sampled"],
                    "keyframes_vs_floor": round(key_ms / floor, 2),
                    "url_scan_ms": round(url_ms, 1),
                    "fetch_ms": url_doc["timings_ms"]["fetch"],
                }
            )
            r = rows[-1]
            print(
                f"{r['clip']:<22} floor {r['decode_floor_ms']:7.1f} ms  scan {r['scan_ms']:7.1f} "
                f"({r['scan_vs_floor']:.2f}×)  keyframes {r['keyframes_ms']:6.1f} ({r['keyframes_vs_floor']:.2f}×, "
                f"{r['keyframes_frames']} frames)  via URL {r['url_scan_ms']:7.1f} (fetch {r['fetch_ms']:.0f})",
                flush=True,
            )
        scanner.close()

    ratios = [r["scan_vs_floor"] for r in rows]
    key_ratios = [r["keyframes_vs_floor"] for r in rows]
    print(
        f"\nmedian over clips: scan {statistics.median(ratios):.2f}× the decode floor (target ≤ 1.3), "
        f"key frames {statistics.median(key_ratios):.2f}× (target ≤ 0.3)"
    )
    print(
        "\n| clip | resolution | decode floor ms | scan ms | × floor | decode | detect | classify "
        "| key frames ms | × floor | via URL ms | fetch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["stages_ms"]
        print(
            f"| {r['clip']} | {r['resolution']} | {r['decode_floor_ms']:.0f} | {r['scan_ms']:.0f} | "
            f"{r['scan_vs_floor']:.2f} | {s['decode']:.0f} | {s['detect']:.0f} | {s['classify']:.0f} | "
            f"{r['keyframes_ms']:.0f} | {r['keyframes_vs_floor']:.2f} | {r['url_scan_ms']:.0f} | "
            f"{r['fetch_ms']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"frames": args.frames, "repeats": args.repeats, "clips": rows}, indent=2))
    staging.rmdir()


if __name__ == "__main__":
    main()
