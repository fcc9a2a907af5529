"""Micro-benchmark of BlazeFace detection on one 720p frame: `python -m tests.bench.bench_detect [--runs N]`."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from scanner.blazeface import FaceDetector, Letterbox
from tests.conftest import VIDEOS_DIR


def first_frame(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def median_ms(call, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", default=str(VIDEOS_DIR / "ffpp_634.mp4"), help="clip whose first frame is used")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads")
    args = parser.parse_args()
    frame = first_frame(args.video)
    print(f"frame {frame.shape[1]}x{frame.shape[0]}, {args.runs} runs, {args.threads} thread(s)")
    for model in ("full", "short"):
        detector = FaceDetector(model, min_score=0.5, num_threads=args.threads)
        for _ in range(10):
            faces = detector.detect(frame)
        letterbox = Letterbox.fit(frame.shape[1], frame.shape[0], detector.spec.input_size)
        tensor = letterbox.tensor(frame)
        total = median_ms(lambda d=detector: d.detect(frame), args.runs)
        prepare = median_ms(lambda lb=letterbox: lb.tensor(frame), args.runs)
        infer = median_ms(lambda d=detector, x=tensor: d.raw(x), args.runs)
        print(
            f"{model:5s} detect median {total:6.2f} ms  (letterbox {prepare:.2f} ms, inference {infer:.2f} ms); "
            f"{len(faces)} face(s)"
        )


if __name__ == "__main__":
    main()
