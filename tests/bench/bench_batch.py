"""Benchmark: `mesoscan batch` throughput in-process with 1 and 2 workers against the same videos scanned one by one.

Run: `python -m tests.bench.bench_batch [--videos 20] [--frames 32] [--repeats 3]` (`make bench` runs it).

A local HTTP server serves the shared clips; the batch is `--videos` distinct URLs (the clips cycled, each copy its own
URL, so nothing is de-duplicated). For each repeat, in this order:
- the sum of single scans: one `Scanner` in this process, model loaded and warmed first, `scan_url` on every URL;
- `run_batch` with `--concurrency 1`, then with `--concurrency 2`: wall time from the command's start (worker
  processes start and load their model inside it) to its outputs written, and each worker's peak RSS.
Medians over the repeats. Targets: concurrency 2 ≥ 1.5× the throughput of concurrency 1, and concurrency 1 within
10 % of the sum of single scans (the model is loaded once per worker, not per video).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from scanner.batch import Options, run_batch
from scanner.config import ScannerSettings
from scanner.pipeline import Scanner
from serving.config import ServingSettings
from tests.conftest import VIDEOS_DIR
from tests.support.media_server import MediaServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/batch.json"))
    args = parser.parse_args()

    clips = sorted(VIDEOS_DIR.glob("*.mp4"))
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    staging = work / "staging"
    staging.mkdir()
    runs: list[dict] = []
    with MediaServer(files={p.name: p for p in clips}) as server:
        urls = [server.url(f"/files/{clips[i % len(clips)].name}?copy={i}") for i in range(args.videos)]
        listing = work / "urls.txt"
        listing.write_text("".join(u + "\n" for u in urls))
        os.environ.update(
            {
                "MESOSCAN_NETWORK_ALLOWLIST": json.dumps([server.netloc]),
                "MESOSCAN_TEMP_DIR": str(staging),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        scanner = Scanner(ScannerSettings(frames=args.frames), serving_settings=ServingSettings())
        scanner.scan_url(urls[0])  # warm up: model, detector, compiled functions
        for repeat in range(args.repeats):
            run: dict = {"single_s": []}
            for url in urls:
                t0 = time.perf_counter()
                doc = scanner.scan_url(url)
                run["single_s"].append(time.perf_counter() - t0)
                assert doc["status"] == "done", doc["error"]
            run["single_sum_s"] = sum(run["single_s"])
            for k in (1, 2):
                out = work / f"out-{repeat}-{k}"
                t0 = time.perf_counter()
                _, outcome = run_batch(Options(str(listing), out, frames=args.frames, concurrency=k))
                wall = time.perf_counter() - t0
                assert outcome.exit_code == 0 and outcome.scanned == args.videos, outcome
                run[f"c{k}_s"] = wall
                run[f"c{k}_startup_s"] = outcome.startup_s
                run[f"c{k}_peak_worker_rss_mb"] = outcome.peak_worker_rss_mb
                shutil.rmtree(out)
            runs.append(run)
            print(
                f"repeat {repeat + 1}: single scans {run['single_sum_s']:.1f} s, --concurrency 1 {run['c1_s']:.1f} s, "
                f"--concurrency 2 {run['c2_s']:.1f} s",
                flush=True,
            )
        scanner.close()
    shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    single, c1, c2 = median("single_sum_s"), median("c1_s"), median("c2_s")
    c1_warm = statistics.median(r["c1_s"] - r["c1_startup_s"] for r in runs)
    per_min = {name: args.videos / (seconds / 60) for name, seconds in (("single", single), ("c1", c1), ("c2", c2))}
    result = {
        "videos": args.videos,
        "frames": args.frames,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "single_sum_s": round(single, 2),
        "c1_s": round(c1, 2),
        "c2_s": round(c2, 2),
        "videos_per_min": {k: round(v, 1) for k, v in per_min.items()},
        "c1_startup_s": median("c1_startup_s"),
        "c2_startup_s": median("c2_startup_s"),
        "c2_vs_c1": round(c1 / c2, 2),
        "c1_vs_single": round(c1 / single, 3),
        "c1_after_startup_vs_single": round(c1_warm / single, 3),
        "peak_worker_rss_mb": {"c1": median("c1_peak_worker_rss_mb"), "c2": median("c2_peak_worker_rss_mb")},
        "runs": runs,
    }
    print(
        f"\n| {args.videos} videos, {args.frames} frames | wall s | of which worker start-up | videos/min "
        "| throughput vs c1 | peak RSS per worker |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| single scans in one process, summed (model warm) | {single:.1f} | – | {per_min['single']:.1f} "
        f"| {c1 / single:.2f}× | – |"
    )
    print(
        f"| batch --concurrency 1 | {c1:.1f} | {result['c1_startup_s']:.1f} | {per_min['c1']:.1f} | 1.00× | "
        f"{result['peak_worker_rss_mb']['c1']:.0f} MiB |"
    )
    print(
        f"| batch --concurrency 2 | {c2:.1f} | {result['c2_startup_s']:.1f} | {per_min['c2']:.1f} | "
        f"{c1 / c2:.2f}× | {result['peak_worker_rss_mb']['c2']:.0f} MiB |"
    )
    print(
        f"\ntargets: --concurrency 2 ≥ 1.5× --concurrency 1: {c1 / c2:.2f}× "
        f"({'met' if c1 / c2 >= 1.5 else 'NOT met'}); --concurrency 1 within 10 % of the single scans: "
        f"{(c1 / single - 1) * 100:+.1f} % ({'met' if c1 <= 1.1 * single else 'NOT met'}; after the workers' "
        f"start-up {(c1_warm / single - 1) * 100:+.1f} %)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
