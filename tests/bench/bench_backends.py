"""Faces per second of each prediction backend at several batch sizes: `python -m tests.bench.bench_backends`.

Embedded TensorFlow, TF Serving over gRPC and over REST (against the test model server, `tests/support/
tfserving_server.py`, in its own process), for meso4_df and mesoinception4_df. Each cell is the median of
`--repeats` timed runs of `--faces` faces, after a warm-up. The remote numbers include the server's own work,
on the same CPU cores as the client. Prints a Markdown table; writes JSON to bench/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.conftest import CROPS_DIR, ROOT, SHARED

MODELS = ("meso4_df", "mesoinception4_df")
BACKENDS = ("embedded", "tfserving-grpc", "tfserving-rest")
BATCHES = (1, 8, 32, 64)


def load_faces(count: int) -> np.ndarray:
    from serving.images import load_face

    files = sorted((CROPS_DIR / "test").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no face crops in {CROPS_DIR / 'test'}")
    return np.stack([load_face(files[i % len(files)]) for i in range(count)])


def faces_per_second(predictor, faces: np.ndarray, repeats: int) -> float:
    predictor.predict(faces[: predictor.settings.batch_size])  # warm-up: connection, tracing
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(faces)
        rates.append(len(faces) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=64, help="faces per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backends.json")
    args = parser.parse_args()
    os.environ.setdefault("MESOSCAN_MODELS_MIRROR", str(SHARED / "models"))

    import tensorflow as tf

    from serving.config import ServingSettings
    from serving.export import export_model
    from serving.predictor import get_predictor
    from tests.support.tfserving_server import start_server

    faces = load_faces(args.faces)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        base = Path(tmp) / "models"
        for name in MODELS:
            export_model(name, base, ServingSettings())
        with start_server(base, Path(tmp) / "tfserving.log") as server:
            urls = {"embedded": "", "tfserving-grpc": server.grpc_target, "tfserving-rest": server.rest_url}
            for name in MODELS:
                for backend in BACKENDS:
                    for batch in BATCHES:
                        settings = ServingSettings(
                            model_backend=backend, tfserving_url=urls[backend] or "unused", batch_size=batch
                        )
                        with get_predictor(name, settings) as predictor:
                            rate = faces_per_second(predictor, faces, args.repeats)
                        results.append(
                            {"model": name, "backend": backend, "batch_size": batch, "faces_per_s": round(rate, 1)}
                        )
                        print(f"{name:18s} {backend:15s} batch {batch:3d}: {rate:8.1f} faces/s", flush=True)

    print()
    print(markdown_table(results))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
        },
        "faces_per_run": args.faces,
        "repeats": args.repeats,
        "statistic": "median faces/s",
        "note": "tfserving-* run against tests/support/tfserving_server.py on the same CPU cores as the client; "
        "tfserving-rest sends JPEG (quality 95) to the `jpeg` signature, gRPC sends raw uint8",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


def markdown_table(results: list[dict]) -> str:
    rows = ["| model | batch | " + " | ".join(BACKENDS) + " |", "|---|---:|" + "---:|" * len(BACKENDS)]
    for name in MODELS:
        for batch in BATCHES:
            rates = {r["backend"]: r["faces_per_s"] for r in results if r["model"] == name and r["batch_size"] == batch}
            rows.append(f"| {name} | {batch} | " + " | ".join(f"{rates[b]:.1f}" for b in BACKENDS) + " |")
    return "\n".join(rows) + "\n\nfaces/s, median of the timed runs; higher is better"


if __name__ == "__main__":
    main()
