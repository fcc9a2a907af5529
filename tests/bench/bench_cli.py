"""Benchmark: `mesoscan scan <clip>` from process start to verdict, and what that time is made of.

Run: `python -m tests.bench.bench_cli [--repeats N] [--cpus 0] [--clip PATH]` (`make bench` runs it). `--cpus 0`
pins this process and every command it starts to core 0 (as `taskset -c 0`).

Each repeat starts fresh processes (a cold start, files in the page cache):
- `mesoscan scan CLIP --json`: time until the verdict document is printed and until the process has exited, with
  the document's own stage timings (`model_load` runs beside `fetch`, `decode` and `detect`);
- `mesoscan --help`, `python -c pass`, and `import tensorflow` alone, to split the start-up.
Medians over the repeats. Target: verdict within 2.5 s of the process start. The scan's CPU time (user + system)
tells what one free core needs, whatever else shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import VIDEOS_DIR

MESOSCAN = str(Path(sys.executable).with_name("mesoscan"))
TARGET_S = 2.5


def run_scan(clip: Path) -> dict:
    """One `mesoscan scan --json`: seconds to the verdict and to the exit, and the document's timings."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [MESOSCAN, "scan", str(clip), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, verdict_at = b"", None
    while chunk := os.read(process.stdout.fileno(), 65536):
        out += chunk
        if verdict_at is None and out.rstrip().endswith(b"\n}"):
            verdict_at = time.perf_counter()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    exited_at = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"mesoscan scan failed ({process.returncode}): {stderr.decode()[-2000:]}")
    document = json.loads(out)
    if stderr.strip():
        print(f"stderr was not empty: {stderr.decode()[:500]!r}", file=sys.stderr)
    return {
        "verdict_s": verdict_at - started,
        "exit_s": exited_at - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "timings_ms": document["timings_ms"],
    }


def wall_s(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def tensorflow_import_s() -> float:
    code = "import time; t = time.perf_counter(); import tensorflow; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip", type=Path, default=VIDEOS_DIR / "ffpp_519_515_DF.mp4")
    parser.add_argument("--cpus", default=None, help="comma-separated cores to run on (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cli.json"))
    args = parser.parse_args()
    if args.cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})  # inherited by every command started

    run_scan(args.clip)  # page cache warm: weights, libraries, the clip
    scans, helps, pythons, tf_imports = [], [], [], []
    for _ in range(args.repeats):
        scans.append(run_scan(args.clip))
        helps.append(wall_s([MESOSCAN, "--help"]))
        pythons.append(wall_s([sys.executable, "-c", "pass"]))
        tf_imports.append(tensorflow_import_s())
        print(
            f"verdict {scans[-1]['verdict_s']:.2f} s, exit {scans[-1]['exit_s']:.2f} s, "
            f"CPU {scans[-1]['cpu_s']:.2f} s, "
            f"stages {json.dumps({k: round(v) for k, v in scans[-1]['timings_ms'].items()})}",
            flush=True,
        )

    def median(values) -> float:
        return statistics.median(values)

    stages = sorted({k for s in scans for k in s["timings_ms"]}, key=list(scans[0]["timings_ms"]).index)
    stage_ms = {k: median(s["timings_ms"].get(k, 0.0) for s in scans) for k in stages}
    verdict_s = median(s["verdict_s"] for s in scans)
    result = {
        "clip": args.clip.name,
        "cpus": sorted(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "verdict_s": round(verdict_s, 3),
        "exit_s": round(median(s["exit_s"] for s in scans), 3),
        "cpu_s": round(median(s["cpu_s"] for s in scans), 3),
        "before_scan_s": round(median(s["verdict_s"] - s["timings_ms"]["total"] / 1000 for s in scans), 3),
        "stages_ms": {k: round(v, 1) for k, v in stage_ms.items()},
        "help_s": round(median(helps), 3),
        "python_start_s": round(median(pythons), 3),
        "tensorflow_import_s": round(median(tf_imports), 3),
        "target_s": TARGET_S,
    }
    print(
        f"\n`mesoscan scan {args.clip.name}` on cores {result['cpus']}, median of {args.repeats}: verdict "
        f"{result['verdict_s']:.2f} s after the process start (target ≤ {TARGET_S}), exit {result['exit_s']:.2f} s\n"
    )
    print("| part | median |")
    print("|---|---|")
    print(f"| process start to verdict | {result['verdict_s']:.2f} s |")
    print(f"| process start to exit | {result['exit_s']:.2f} s |")
    print(f"| CPU time of the scan process (user + system, to exit) | {result['cpu_s']:.2f} s |")
    print(f"| before the scan starts (python, imports, settings) and printing | {result['before_scan_s']:.2f} s |")
    for name, ms in result["stages_ms"].items():
        print(f"| scan stage `{name}` | {ms / 1000:.2f} s |")
    print(f"| `python -c pass` | {result['python_start_s']:.2f} s |")
    print(f"| `import tensorflow` alone | {result['tensorflow_import_s']:.2f} s |")
    print(f"| `mesoscan --help` | {result['help_s']:.2f} s |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "runs": scans}, indent=2))


if __name__ == "__main__":
    main()
