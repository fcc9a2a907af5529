"""Upload benchmark (not a test): MB/s of a 50 MB upload into the gateway over loopback, and the gateway's memory while
4 uploads run at once (it must not grow with the file size).

    python -m tests.bench.bench_upload [--mb 50] [--small-mb 5] [--concurrent 4] [--runs 3] [--json FILE]

Everything runs on 127.0.0.1: a Redis of its own, a PostgreSQL database of its own (dropped at the end) and the
gunicorn gateway (`mesoscan serve`, 2 processes × 4 threads); no worker runs, so only the gateway's side is measured.

1. `stream`: a video of at least 50 MB (made with ffmpeg) sent to a gateway whose duration limit is 1 s: it streams
   the body to disk with sha256, then the probe refuses it from the header alone (422 too_long), so the time is
   receiving and storing.
2. `video`: the same video to a gateway with the default limits: streaming, probing (every packet indexed) and
   recording the scan (202).
3. Memory: the summed RSS of the gateway's processes, sampled every 20 ms, while `--concurrent` uploads of
   `--small-mb` and then of `--mb` run at once, against its RSS when idle.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests
from urllib3 import encode_multipart_formdata


def rss_kib(root_pid: int) -> int:
    """Summed resident memory of a process and its children (gunicorn's master and workers)."""
    pids, total = {root_pid}, 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root_pid:
                    pids.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def body_of(data: bytes, name: str) -> tuple[bytes, str]:
    return encode_multipart_formdata({"file": (name, data, "video/mp4")})


def post(base: str, key: str, body: bytes, content_type: str) -> tuple[int, float]:
    started = time.perf_counter()
    r = requests.post(
        f"{base}/api/v1/scans", data=body, headers={"Content-Type": content_type, "X-API-Key": key}, timeout=300
    )
    return r.status_code, time.perf_counter() - started


def make_video(path: Path, mb: int) -> bytes:
    seconds = 20
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1280x720:rate=25:duration={seconds}",
            "-vf",
            "noise=alls=40:allf=t",  # grain, so the encoder needs the bit rate asked for
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            f"{mb * 10 // seconds}M",
            "-movflags",
            "+faststart",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    data = path.read_bytes()
    if len(data) < mb * 1_000_000:
        raise SystemExit(f"the generated video has {len(data) / 1e6:.1f} MB, fewer than {mb}")
    return data


def peak_during(root_pid: int, uploads) -> tuple[int, list[tuple[int, float]]]:
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(root_pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(lambda f: f(), uploads))
    stop.set()
    sampler.join()
    return peak[0], results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--small-mb", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from server.db import session_scope, upgrade
    from server.keys import create_key
    from tests.support.server_stack import RedisServer, postgres_database, service_env, start_gateway

    work = Path(tempfile.mkdtemp(prefix="mesoscan-bench-upload-"))
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "settings": vars(args) | {"json": None}}
    redis = RedisServer(work).start()
    try:
        with postgres_database() as db_url:
            upgrade(db_url)
            with session_scope(db_url) as session:
                key = create_key(session, "bench").key
            env = service_env(
                db_url,
                redis.url,
                MESOSCAN_UPLOAD_DIR=str(work / "uploads"),
                MESOSCAN_CACHE_TTL_S="0",
                MESOSCAN_MAX_UPLOAD_MB=str(args.mb * 4),
                MESOSCAN_UPLOAD_DAILY_MB="1000000",
                MESOSCAN_QUEUE="mesoscan.bench-upload",
            )
            video = make_video(work / "video.mp4", args.mb)
            video_body, video_type = body_of(video, "video.mp4")
            short, base = start_gateway({**env, "MESOSCAN_MAX_DURATION_S": "1"}, work)
            try:
                times = []
                for _ in range(args.runs):
                    status, seconds = post(base, key, video_body, video_type)
                    assert status == 422, status
                    times.append(seconds)
            finally:
                short.stop()
            median = statistics.median(times)
            results["stream"] = {
                "mb": round(len(video) / 1e6, 1),
                "median_s": round(median, 3),
                "mb_per_s": round(len(video) / 1e6 / median, 1),
            }
            gateway, base = start_gateway(env, work)
            assert gateway.process is not None
            pid = gateway.process.pid
            try:
                times = []
                for _ in range(args.runs):
                    status, seconds = post(base, key, video_body, video_type)
                    assert status == 202, status
                    times.append(seconds)
                median = statistics.median(times)
                results["video"] = {
                    "mb": round(len(video) / 1e6, 1),
                    "median_s": round(median, 3),
                    "mb_per_s": round(len(video) / 1e6 / median, 1),
                }
                for stored in (work / "uploads").iterdir():
                    stored.unlink()

                idle = rss_kib(pid)
                results["memory"] = {"idle_mib": round(idle / 1024, 1)}
                for mb in (args.small_mb, args.mb):
                    body, content_type = body_of(os.urandom(mb * 1_000_000), "random.mp4")
                    peak, answers = peak_during(
                        pid, [lambda b=body, t=content_type: post(base, key, b, t)] * args.concurrent
                    )
                    assert all(status == 422 for status, _ in answers), answers
                    results["memory"][f"peak_{args.concurrent}x{mb}mb_mib"] = round(peak / 1024, 1)
                    results["memory"][f"growth_{args.concurrent}x{mb}mb_mib"] = round((peak - idle) / 1024, 1)
                    del body
            finally:
                gateway.stop()
                redis.client().delete("mesoscan.bench-upload")
    finally:
        redis.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    print(json.dumps(results, indent=2))
    m = results["memory"]
    print(f"\n| upload ({results['stream']['mb']} MB, loopback) | MB/s | median s |\n|---|---|---|")
    for name in ("stream", "video"):
        print(f"| {name} | {results[name]['mb_per_s']} | {results[name]['median_s']} |")
    print(f"\n| gateway RSS | MiB |\n|---|---|\n| idle | {m['idle_mib']} |")
    for mb in (args.small_mb, args.mb):
        print(f"| {args.concurrent} × {mb} MB at once (peak) | {m[f'peak_{args.concurrent}x{mb}mb_mib']} |")
    out = args.json or Path("bench/results/upload.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
