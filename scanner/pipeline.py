"""The scan: URL or file → video → sampled frames → faces → scores → verdict document.

Decoding runs in a background thread (PyAV releases the GIL) while the calling thread detects, crops and
tracks faces, so the two overlap on two cores; crops are scored in batches through the prediction
interface. A scan that finds its model not loaded yet loads it in another thread meanwhile (`model_load`),
needing it only to crop and score the first faces (a process with one core loads it first, in the calling thread).
Stage timings in the document are the time each stage itself took (decode, detect and the model load overlap, so
they may add up to more than the total).
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from scanner.config import ScannerSettings
from scanner.document import VideoSource
from scanner.errors import ModelUnavailableError, ScanError
from scanner.threads import limit_threads
from scanner.verdict import ScoredFace, build_document, failed_document
from serving.config import ServingSettings

Progress = Callable[[str, float], None]
"""progress(stage, fraction): stage is `fetch`, `analyze` or `classify`; fraction in [0, 1]."""

Reuse = Callable[[dict], "dict | None"]
"""reuse(source) → an earlier verdict document for the same content, or None to analyse the video."""

_DONE = object()


DEFAULT_UNCERTAIN_BAND = 0.1
"""For models that record no band of their own (the authors' 2018 models)."""


def _no_progress(stage: str, fraction: float) -> None:
    pass


class Scanner:
    """Scans videos with one model. Make one per process, after any fork (the model loads on first use)."""

    def __init__(
        self,
        settings: ScannerSettings,
        model: str | None = None,
        predictor=None,
        serving_settings: ServingSettings | None = None,
    ):
        """`serving_settings` load `model` (default: theirs); a `predictor` given instead is used as it is."""
        if predictor is None and serving_settings is None:
            raise TypeError("Scanner needs the serving settings to load its model (or a predictor)")
        self.settings = settings
        self._model = model
        self._serving_settings = serving_settings
        self._predictor = predictor
        self._spec = None
        self._detector = None
        self._members = None
        self._lock = threading.Lock()
        self._detector_lock = threading.Lock()  # the detector is made while the model may be loading

    @property
    def predictor(self):
        from serving.errors import ServingError
        from serving.predictor import get_predictor, uses_tensorflow

        with self._lock:
            if self._predictor is None:
                # before TensorFlow (for a model that needs it) runs anything here
                limit_threads(self.settings.compute_threads, uses_tensorflow(self.spec, self._serving_settings))
                try:
                    self._predictor = get_predictor(self._model, self._serving_settings)
                except ServingError as exc:
                    raise ModelUnavailableError(str(exc)) from None
            return self._predictor

    @property
    def spec(self):
        """The model's registry entry (threshold, band, crop margin), known without loading the model."""
        if self._predictor is not None:
            return self._predictor.spec
        if self._spec is None:
            from serving.errors import ServingError
            from serving.registry import get_model

            try:
                self._spec = get_model(self._model or self._serving_settings.model, self._serving_settings)
            except ServingError as exc:
                raise ModelUnavailableError(str(exc)) from None
        return self._spec

    @property
    def _model_settings(self) -> ServingSettings:
        return self._predictor.settings if self._predictor is not None else self._serving_settings

    @property
    def detector(self):
        from scanner.blazeface import FaceDetector
        from serving.quiet import startup_step

        with self._detector_lock:
            if self._detector is None:
                detector = FaceDetector(
                    self.settings.detector, self.settings.min_detection_score, model_dir=self.settings.blazeface_dir
                )
                with startup_step():  # LiteRT makes its interpreter (and logs its delegate) on the first detection
                    detector.detect(np.zeros((detector.spec.input_size,) * 2 + (3,), np.uint8))
                self._detector = detector
            return self._detector

    @property
    def margins(self) -> tuple[float, ...]:
        """The crop margins this scan cuts faces with: the model's own (an override when `crop_margin` is set), or
        one per distinct margin of an ensemble's members."""
        if self.settings.crop_margin is not None:
            return (self.settings.crop_margin,)
        return tuple(dict.fromkeys((self.spec.crop_margin, *self._member_margins().values())))

    def _member_margins(self) -> dict[str, float]:
        from serving.registry import ensemble_members

        spec = self.spec
        if not spec.is_ensemble or self.settings.crop_margin is not None:
            return {}
        members = ensemble_members(spec, self._model_settings)
        margins = {m.name: m.crop_margin for m in members}
        return margins if len(set(margins.values())) > 1 else {}

    def score(self, crops: list[np.ndarray]) -> np.ndarray:
        """Fake probabilities of faces given as one stacked batch per margin of `margins`."""
        mixed = self._member_margins()
        if not mixed:
            return self.predictor.predict(crops[0])
        from serving.calibration import calibrate
        from serving.predictor import get_predictor

        settings = self.predictor.settings  # the property takes the lock itself
        with self._lock:
            if self._members is None:
                self._members = {name: get_predictor(name, settings) for name in mixed}
        position = {m: i for i, m in enumerate(self.margins)}
        scores = [self._members[name].predict(crops[position[m]]) for name, m in mixed.items()]
        return calibrate(np.mean(scores, axis=0), self.predictor.spec.calibration)

    def band(self) -> float:
        """The `uncertain` band: the setting when given, else the model's own, else the default."""
        if self.settings.uncertain_band is not None:
            return self.settings.uncertain_band
        spec_band = self.spec.uncertain_band
        return DEFAULT_UNCERTAIN_BAND if spec_band is None else spec_band

    def model_info(self) -> dict:
        spec = self.predictor.spec
        return {"name": spec.name, "version": spec.version, "backend": self.predictor.backend}

    def _model_summary(self) -> dict:
        """`model_info()` from the registry and the settings, before the model is loaded."""
        if self._predictor is not None:
            return self.model_info()
        spec = self.spec
        return {"name": spec.name, "version": spec.version, "backend": self._serving_settings.model_backend}

    def close(self) -> None:
        with self._lock:  # waits for a model load still running
            predictor = self._predictor
        if predictor is not None:
            predictor.close()
        for member in (self._members or {}).values():
            member.close()

    # --- entry points -------------------------------------------------------------------------------------

    def scan_url(self, url: str, progress: Progress | None = None, reuse: Reuse | None = None) -> dict[str, Any]:
        """Fetch `url` with yt-dlp (through the network guard) and scan it. Never reads local paths.

        `reuse(source)` is called once the video is downloaded (`source` has its sha256): a document it returns
        is the result, and the video is not analysed again (de-duplication by content).
        """
        from scanner.download import fetch_video

        def fetch_progress(stage: str, fraction: float | None) -> None:
            if progress is not None and stage == "downloading" and fraction is not None:
                progress("fetch", fraction)

        return self._scan(
            lambda: fetch_video(url, self.settings, progress=fetch_progress), {"url": url}, progress, reuse
        )

    def scan_file(self, path: str | Path, progress: Progress | None = None) -> dict[str, Any]:
        """Scan a local file (the command line only; the gateway must never call this)."""
        from scanner.download import open_local_video

        return self._scan(lambda: open_local_video(Path(path), self.settings), {"url": None}, progress)

    # --- the work -----------------------------------------------------------------------------------------

    def _scan(
        self,
        open_video: Callable[[], AbstractContextManager],
        source: dict,
        progress: Progress | None,
        reuse: Reuse | None = None,
    ) -> dict[str, Any]:
        progress = progress or _no_progress
        started = time.perf_counter()
        timings: dict[str, float] = {}
        model = None
        source = VideoSource.unknown(source.get("url")).to_dict()
        try:
            model = self._model_summary()  # fail fast, before downloading, on an unknown model
            loading = _ModelLoad(self)
            progress("fetch", 0.0)
            fetch_started = time.perf_counter()
            with open_video() as video:
                timings["fetch"] = (time.perf_counter() - fetch_started) * 1000
                source = video.source
                progress("fetch", 1.0)
                if reuse is not None and (earlier := reuse(source)) is not None:
                    return earlier
                document = self._analyze(
                    Path(video.path), video.info.index, source, model, timings, progress, started, loading
                )
        except ScanError as exc:
            timings["total"] = (time.perf_counter() - started) * 1000
            return failed_document(
                source=source,
                model=model,
                code=exc.code,
                message=exc.message,
                retryable=exc.retryable,
                timings_ms=timings,
            )
        return document

    def faces(
        self, path: Path, index, progress: Progress | None = None, margins: tuple[float, ...] | None = None
    ) -> FaceStream:
        """The faces of `path`'s sampled frames, frame by frame (`with scanner.faces(...) as stream: for faces in
        stream: ...`), cropped exactly as scans score them (or with `margins`); `index` is the video's packet
        index."""
        return FaceStream(path, index, self.settings, self.detector, progress or _no_progress, margins or self.margins)

    def _analyze(
        self,
        path: Path,
        index,
        source: dict,
        model: dict,
        timings: dict[str, float],
        progress: Progress,
        started: float,
        loading: _ModelLoad,
    ) -> dict[str, Any]:
        from serving.errors import InvalidInputError, ServingError

        s = self.settings
        spec = self.spec
        batch_size = self._model_settings.batch_size
        faces: list[ScoredFace] = []
        pending: list[tuple[ScoredFace, tuple[np.ndarray, ...]]] = []
        keep: list[tuple[float, int, np.ndarray]] = []  # min-heap of the most suspicious crops
        classify_ms = 0.0

        def classify(batch: list[tuple[ScoredFace, tuple[np.ndarray, ...]]]) -> None:
            nonlocal classify_ms
            loading.wait()
            t0 = time.perf_counter()
            try:
                scores = self.score([np.stack([crops[i] for _, crops in batch]) for i in range(len(batch[0][1]))])
            except InvalidInputError:
                raise
            except ServingError as exc:
                raise ModelUnavailableError(str(exc)) from None
            classify_ms += (time.perf_counter() - t0) * 1000
            for (face, crops), score in zip(batch, scores, strict=True):
                face.fake_probability = float(score)
                faces.append(face)
                entry = (face.fake_probability, id(face), crops[0])
                if len(keep) < s.top_faces:
                    heapq.heappush(keep, entry)
                elif s.top_faces and entry[0] > keep[0][0]:
                    heapq.heapreplace(keep, entry)

        stream = FaceStream(path, index, s, self.detector, progress, self.margins, before_crops=loading.wait)
        with stream:
            for found in stream:
                pending += found
                if len(pending) >= batch_size:
                    classify(pending)
                    pending = []
        if pending:
            progress("classify", 0.0)
            classify(pending)
        progress("classify", 1.0)

        kept_images = {key: crop for _, key, crop in keep}
        for face in faces:
            face.image = kept_images.get(id(face))
        loading.wait()  # a model that cannot load fails the scan, even of a video without faces
        timings.update(
            loading.timings(),
            decode=stream.decode_ms,
            detect=stream.detect_ms,
            classify=classify_ms,
            total=(time.perf_counter() - started) * 1000,
        )
        return build_document(
            source=source,
            model=model,
            threshold=spec.threshold,
            band=self.band(),
            faces=faces,
            frame_times=stream.frame_times,
            faces_skipped=stream.skipped,
            keyframes=s.keyframes,
            top=s.top_faces,
            timings_ms=timings,
        )


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _ModelLoad:
    """A scanner's model loading from the start of a scan: in a thread, while the video is fetched and decoded, when
    the process has a second core; else at once (on one core the threads would only take turns, and cost the
    switching: 0.3 s more for a 30 s clip)."""

    def __init__(self, scanner: Scanner):
        self.ms: float | None = None
        self._error: BaseException | None = None
        self._thread = None
        if scanner._predictor is None:
            if _cores() > 1:
                self._thread = threading.Thread(target=self._load, args=(scanner,), name="model-load", daemon=True)
                self._thread.start()
            else:
                self._load(scanner)
                self.wait()  # a model that cannot load fails the scan before the fetch

    def _load(self, scanner: Scanner) -> None:
        started = time.perf_counter()
        try:
            scanner.model_info()  # loads it
        except BaseException as exc:  # raised in the scanning thread by wait()
            self._error = exc
            return
        self.ms = (time.perf_counter() - started) * 1000

    def wait(self) -> None:
        """Until the model is loaded; raises what stopped it loading (ModelUnavailableError, usually)."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def timings(self) -> dict[str, float]:
        return {} if self.ms is None else {"model_load": self.ms}


class FaceStream(AbstractContextManager):
    """Sampled frames → faces found (BlazeFace), too-small ones skipped, people tracked, faces cropped for the model.

    Iterating yields, for each sampled frame, its list of (ScoredFace without a score, crops): one 256×256 crop per
    margin of `margins` (a multiple of the detected box side; the first is the model's own). Decoding runs ahead in
    a thread; `frame_times`, `skipped`, `decode_ms` and `detect_ms` describe the work once done. `before_crops()`
    is called before faces are cropped (the model is loaded by then).
    """

    def __init__(
        self,
        path: Path,
        index,
        settings: ScannerSettings,
        detector,
        progress: Progress,
        margins: tuple[float, ...],
        before_crops: Callable[[], None] = lambda: None,
    ):
        from scanner.tracking import FaceTracker
        from scanner.video import choose_frames

        self.settings, self.detector, self.progress, self.margins = settings, detector, progress, margins
        self.before_crops = before_crops
        self.expected = len(choose_frames(index, settings.frames, settings.keyframes))
        self.tracker = FaceTracker()
        self.frame_times: list[float] = []
        self.skipped = 0
        self.detect_ms = 0.0
        self._frames = BackgroundFrames(path, index, settings)

    @property
    def decode_ms(self) -> float:
        return self._frames.decode_ms

    def __enter__(self) -> FaceStream:
        self._frames.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._frames.__exit__(*exc)

    def __iter__(self) -> Iterator[list[tuple[ScoredFace, tuple[np.ndarray, ...]]]]:
        from scanner.faces import crop_face, select_faces

        s = self.settings
        for frame in self._frames:
            t0 = time.perf_counter()
            detections, small = select_faces(self.detector.detect(frame.image), s.min_face_px)
            self.skipped += small
            people = self.tracker.assign(frame.t, detections)
            if detections:
                waited = time.perf_counter()
                self.before_crops()
                t0 += time.perf_counter() - waited  # waiting is no detection time
            found = []
            for detection, person in zip(detections, people, strict=True):
                crops = [crop_face(frame.image, detection, margin) for margin in self.margins]
                found.append(
                    (
                        ScoredFace(frame.t, frame.index, person, crops[0].box, float("nan")),
                        tuple(c.image for c in crops),
                    )
                )
            self.detect_ms += (time.perf_counter() - t0) * 1000
            self.frame_times.append(frame.t)
            self.progress("analyze", len(self.frame_times) / max(self.expected, 1))
            yield found


class BackgroundFrames(AbstractContextManager, Iterator):
    """Sampled frames decoded by a thread a few frames ahead (bounded queue); leaving the block stops it."""

    def __init__(self, path: Path, index, settings: ScannerSettings, ahead: int = 4):
        from scanner.video import sample_frames

        self.decode_ms = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._frames = sample_frames(
            path,
            settings.frames,
            settings.keyframes,
            index,
            threads=settings.compute_threads,
            max_frames=settings.max_frames,
            max_pixels=settings.max_frame_pixels,
            frame_pixels=settings.frame_pixels,
        )
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = next(self._frames, _DONE)
                self.decode_ms += (time.perf_counter() - t0) * 1000
                self._put(frame)
                if frame is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer and raised there
            self._put(exc)
        finally:
            self._frames.close()  # closes the container even when stopped early

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __enter__(self) -> BackgroundFrames:
        self._thread.start()
        return self

    def __next__(self):
        item = self._queue.get()
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
