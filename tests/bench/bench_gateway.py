"""Gateway benchmark (not a test): enqueue and cached-read latency with wrk, and batch throughput with 1 and 2 workers.

    python -m tests.bench.bench_gateway [--duration 10] [--connections 8] [--batch 50] [--frames 16]

Everything runs on 127.0.0.1: a Redis of its own, a PostgreSQL database of its own (dropped at the end), the gunicorn
gateway (`mesoscan serve`), Celery workers (`mesoscan worker`, embedded model) and a media server over the shared
clips. Needs `wrk` (Debian package) and the shared data beside the repository.

1. `POST /api/v1/scans` with a new URL each request (enqueue only: no worker runs then).
2. `GET /api/v1/scans/<id>` of a finished scan (a real verdict document, face crops included).
3. A batch of N clip URLs (distinct URLs, verdict reuse off so each is really scanned) with 1 worker, then 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.conftest import SHARED, VIDEOS_DIR

VIDEOS = VIDEOS_DIR
SHARED_MODELS = SHARED / "models"

POST_SCRIPT = """
local counter = 0
local id = 0
function setup(thread)
  id = id + 1
  thread:set("id", id)
end
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
end
function request()
  counter = counter + 1
  local body = string.format('{"url": "https://bench.invalid/%d-%d-%d.mp4"}',
                             id or 0, math.random(1, 1000000000), counter)
  return wrk.format("POST", "/api/v1/scans", {["Content-Type"] = "application/json", ["X-API-Key"] = "KEY"}, body)
end
"""


def parse_wrk(output: str) -> dict:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": round(ms(latency["50"]), 2),
        "p99_ms": round(ms(latency["99"]), 2),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def wrk(args: list[str]) -> tuple[dict, str]:
    cmd = ["wrk", *args]
    output = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output), " ".join(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections for the cached read")
    parser.add_argument(
        "--enqueue-connections",
        default="1,2,8",
        help="comma-separated wrk connection counts for the enqueue runs (one run each)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--batch", type=int, default=50, help="clip URLs in the throughput batch (0: skip it)")
    parser.add_argument("--frames", type=int, default=16, help="MESOSCAN_FRAMES for the workers")
    parser.add_argument(
        "--compute-threads",
        type=int,
        default=1,
        help="MESOSCAN_COMPUTE_THREADS for the workers: 1 = one core per worker process, the "
        "throughput setting (0: the libraries' default, all cores)",
    )
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")

    from sqlalchemy import delete

    from server.db import session_scope, upgrade
    from server.keys import create_key
    from server.models import Scan
    from tests.support.media_server import MediaServer
    from tests.support.server_stack import RedisServer, postgres_database, service_env, start_gateway, start_worker

    work = Path(tempfile.mkdtemp(prefix="mesoscan-bench-"))
    os.environ.setdefault("MESOSCAN_MODELS_MIRROR", str(SHARED_MODELS))
    os.environ.setdefault("MESOSCAN_MODELS_DIR", str(work / "models"))
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "settings": vars(args) | {"json": None}}
    redis = RedisServer(work).start()
    media = MediaServer(files={p.name: p for p in sorted(VIDEOS.glob("*.mp4"))}).start()
    services = []
    try:
        with postgres_database() as db_url:
            upgrade(db_url)
            with session_scope(db_url) as session:
                key = create_key(session, "bench", rate_limit="100000000/minute").key
            threads = {"MESOSCAN_COMPUTE_THREADS": str(args.compute_threads)} if args.compute_threads else {}
            env = service_env(
                db_url,
                redis.url,
                MESOSCAN_FRAMES=str(args.frames),
                MESOSCAN_CACHE_TTL_S="0",
                **threads,
                MESOSCAN_GATEWAY_WORKERS=str(args.gateway_workers),
                MESOSCAN_READ_RATE_LIMIT="100000000/minute",
            )
            gateway, base = start_gateway(env, work)
            services.append(gateway)
            http = requests.Session()
            http.headers["X-API-Key"] = key

            # 1. enqueue
            script = work / "post.lua"
            script.write_text(POST_SCRIPT.replace("KEY", key))
            load = [f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
            results["enqueue"] = {}
            for connections in [int(c) for c in args.enqueue_connections.split(",")]:
                run = [f"-t{min(args.threads, connections)}", f"-c{connections}", f"-d{args.duration}s", "--latency"]
                stats, cmd = wrk([*run, "-s", str(script), base])
                results["enqueue"][f"{connections}_connections"] = stats | {
                    "cmd": cmd.replace(key, "$KEY").replace(str(script), "post.lua")
                }
            # Those scans are never to run: drop their messages and their records before any worker starts.
            redis.client().delete("mesoscan.scans")
            with session_scope(db_url) as session:
                session.execute(delete(Scan).where(Scan.status == "queued"))

            # 3. throughput (also makes the finished scan read in 2.)
            clips = sorted(VIDEOS.glob("*.mp4"))
            if not args.batch:  # only a finished scan for 2.
                workers = [start_worker("bench", env, work)]
                services += workers
                one = http.post(f"{base}/api/v1/scans", json={"url": media.url(f"/files/{clips[0].name}")})
                final = {"items": [{"status": "done", "scan_id": _wait(http, one.json()["status_url"], True)["id"]}]}
            for count in (1, 2) if args.batch else ():
                workers = [start_worker(f"bench{count}-{i}", env, work) for i in range(count)]
                services += workers
                urls = [media.url(f"/files/{clips[i % len(clips)].name}?n={count}-{i}") for i in range(args.batch)]
                warm_url = media.url(f"/files/{clips[0].name}?warm={count}")
                warm = http.post(f"{base}/api/v1/scans", json={"url": warm_url})
                _wait(http, warm.json()["status_url"], single=True)  # the models are loaded before timing
                if count == 2:
                    warm2 = http.post(
                        f"{base}/api/v1/batches",
                        json={"urls": [media.url(f"/files/{clips[1].name}?warm2={i}") for i in range(2)]},
                    ).json()
                    _wait(http, warm2["status_url"])
                started = time.perf_counter()
                batch = http.post(f"{base}/api/v1/batches", json={"urls": urls}).json()
                final = _wait(http, batch["status_url"])
                elapsed = time.perf_counter() - started
                results[f"batch_{count}_worker"] = {
                    "seconds": round(elapsed, 1),
                    "scans_per_minute": round(60 * args.batch / elapsed, 1),
                    "counts": final["counts"],
                }
                for worker in workers:
                    worker.stop()
            done_id = next(i["scan_id"] for i in final["items"] if i["status"] == "done")
            if args.batch:
                results["scaling_2_vs_1"] = round(
                    results["batch_1_worker"]["seconds"] / results["batch_2_worker"]["seconds"], 2
                )

            # 2. cached read
            results["document_bytes"] = len(http.get(f"{base}/api/v1/scans/{done_id}").content)
            results["get_done"], results["get_done_cmd"] = wrk(
                [*load, "-H", f"X-API-Key: {key}", f"{base}/api/v1/scans/{done_id}"]
            )
            results["get_done_cmd"] = results["get_done_cmd"].replace(key, "$KEY")
    finally:
        for service in services:
            service.stop()
        media.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _wait(http: requests.Session, status_url: str, single: bool = False, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(status_url, timeout=10).json()
        if (single and body["status"] in ("done", "failed")) or (not single and body.get("complete")):
            return body
        time.sleep(0.25)
    raise TimeoutError(status_url)


if __name__ == "__main__":
    main()
