"""Training-time augmentation of uint8 face batches (numpy and OpenCV, called from the input pipeline).

The paper's augmentation (zoom, rotation, horizontal flip, brightness, hue) plus three that web video needs
(Gaussian blur, downscale-then-upscale, JPEG re-compression). It works on numpy arrays, so it feeds a model under
any Keras backend; the model and the training loop stay Keras-only.

Two choices keep it fast and reproducible on a small CPU:

* each image gets **one** affine warp (flip, rotation and zoom folded into one matrix) and **one** 3×4 colour
  matrix (brightness, and hue as a rotation about the grey axis in YIQ space), each a single OpenCV pass on uint8.
  The same augmentation written as TensorFlow ops in `tf.data` ran at about 22 crops/s on one core here; this runs
  at well over 1,000;
* every random decision of a batch comes from a generator seeded by (seed, epoch, batch index) alone, so parallel
  workers in any order give the same augmented batches, and a resumed run repeats them exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from serving import degrade
from serving.errors import InvalidInputError

_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    """Horizontal flip with probability 1/2."""
    rotation: float = 15.0
    """Maximum rotation either way, degrees."""
    zoom: float = 0.2
    """Maximum zoom in or out, as a fraction (0.2: the face appears 0.8× to 1.2× as large)."""
    brightness: float = 0.1
    """Maximum brightness shift either way, as a fraction of 255."""
    hue: float = 0.05
    """Maximum hue rotation either way, as a fraction of the hue circle (0.05 = 18°)."""
    blur_prob: float = 0.0
    """Probability of a Gaussian blur per image, its sigma (pixels) drawn from `blur_sigma`."""
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    downscale_prob: float = 0.0
    """Probability of shrinking an image to a fraction drawn from `downscale_factor` of its side (area filter) and
    scaling it back up (bilinear): the lost detail of a video that was served at a lower resolution."""
    downscale_factor: tuple[float, float] = (0.3, 0.8)
    jpeg_prob: float = 0.0
    """Probability of re-compressing an image as JPEG at a quality drawn from `jpeg_quality`."""
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self):
        checks = {
            "rotation": 0 <= self.rotation <= 180,
            "zoom": 0 <= self.zoom < 1,
            "brightness": 0 <= self.brightness <= 1,
            "hue": 0 <= self.hue <= 0.5,
            "blur_prob": 0 <= self.blur_prob <= 1,
            "jpeg_prob": 0 <= self.jpeg_prob <= 1,
            "downscale_prob": 0 <= self.downscale_prob <= 1,
            "downscale_factor": 0.05 <= self.downscale_factor[0] <= self.downscale_factor[1] <= 1,
            "blur_sigma": 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 5,
            "jpeg_quality": 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidInputError(
                "augmentation setting(s) out of range: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            )

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(flip=False, rotation=0, zoom=0, brightness=0, hue=0, blur_prob=0, downscale_prob=0, jpeg_prob=0)

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig.none()

    @property
    def geometric(self) -> bool:
        return self.flip or self.rotation > 0 or self.zoom > 0

    @property
    def colour(self) -> bool:
        return self.brightness > 0 or self.hue > 0

    def to_dict(self) -> dict:
        return asdict(self)


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator for one batch's random decisions: a function of (seed, epoch, batch index) only."""
    return np.random.default_rng([seed, epoch, batch])


def _yiq_hue_rotation(angle: float) -> np.ndarray:
    yiq = np.array(_RGB_TO_YIQ)
    c, s = math.cos(angle), math.sin(angle)
    return np.linalg.inv(yiq) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ yiq


def augment(images: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """`images` [B, H, W, 3] uint8 augmented as `config` says, decisions drawn from `rng` in a fixed order."""
    import cv2

    images = np.asarray(images)
    if not config.enabled:
        return images.copy()
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = _augment_one(np.ascontiguousarray(image), config, rng, cv2)
    return out


def _augment_one(x: np.ndarray, c: AugmentConfig, rng: np.random.Generator, cv2) -> np.ndarray:
    # Every draw happens whatever the probabilities, so one setting never shifts the others' random numbers.
    flip, angle, zoom, hue, offset, blur_u, sigma, down_u, factor, jpeg_u, quality = rng.random(11)
    height, width = x.shape[:2]
    if c.geometric:
        mirror = c.flip and flip < 0.5
        degrees = (2 * angle - 1) * c.rotation
        scale = 1 + (2 * zoom - 1) * c.zoom  # >1 zooms in
        m = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, scale)
        if mirror:  # mirror first: x -> (width - 1) - x
            m = m @ np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], np.float64)
        x = cv2.warpAffine(x, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if c.colour:
        rotation = _yiq_hue_rotation((2 * hue - 1) * c.hue * 2 * math.pi)
        shift = (2 * offset - 1) * c.brightness * 255
        x = cv2.transform(x, np.hstack([rotation, np.full((3, 1), shift)]))  # uint8 out, saturated
    if c.blur_prob > 0 and blur_u < c.blur_prob:
        x = degrade.blur(x, c.blur_sigma[0] + sigma * (c.blur_sigma[1] - c.blur_sigma[0]))
    if c.downscale_prob > 0 and down_u < c.downscale_prob:
        x = degrade.downscale(x, c.downscale_factor[0] + factor * (c.downscale_factor[1] - c.downscale_factor[0]))
    if c.jpeg_prob > 0 and jpeg_u < c.jpeg_prob:
        q = int(c.jpeg_quality[0] + quality * (c.jpeg_quality[1] - c.jpeg_quality[0] + 1))
        x = degrade.jpeg(x, min(q, c.jpeg_quality[1]))
    return x


class Augmenter:
    """Augments batches in sequence from one seeded generator (for tests and notebooks; training draws a generator
    per batch with `batch_rng`)."""

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self._rng = np.random.default_rng(seed)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return augment(images, self.config, self._rng)
