"""Training-time augmentation of uint8 face batches inside the `tf.data` input pipeline.

The paper's augmentation (zoom, rotation, horizontal flip, brightness, hue) plus three that web video needs
(Gaussian blur, downscale-then-upscale, JPEG re-compression). It runs as TensorFlow ops in `tf.data`, which feeds
a model under any Keras backend; the model and the training loop stay Keras-only.

Two choices keep it fast and reproducible on a small CPU:

* each image gets **one** projective transform (flip, rotation and zoom folded into one matrix) and **one**
  per-image 3×3 colour matrix plus offset (brightness, and hue as a rotation about the grey axis in YIQ space),
  instead of one full-image pass per effect (Keras' preprocessing layers need about 4× the time);
* `draw` takes every random decision for a batch from one seeded generator and runs in order (a sequential map);
  `apply` is pure and runs in a parallel map. Parallel maps that drew their own random numbers would get them in
  a different order on every run; this way the same seed gives the same augmented batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
            "rotation": 0 <= self.rotation <= 180, "zoom": 0 <= self.zoom < 1, "brightness": 0 <= self.brightness <= 1,
            "hue": 0 <= self.hue <= 0.5, "blur_prob": 0 <= self.blur_prob <= 1, "jpeg_prob": 0 <= self.jpeg_prob <= 1,
            "downscale_prob": 0 <= self.downscale_prob <= 1,
            "downscale_factor": 0.05 <= self.downscale_factor[0] <= self.downscale_factor[1] <= 1,
            "blur_sigma": 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 5,
            "jpeg_quality": 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidInputError("augmentation setting(s) out of range: "
                                    + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

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


class Augmenter:
    """Augments [B, H, W, 3] uint8 batches: `apply(images, draw(images))` → uint8 batch of the same shape."""

    def __init__(self, config: AugmentConfig, seed: int):
        import tensorflow as tf

        self.config = config
        self._rng = tf.random.Generator.from_seed(seed)

    def draw(self, images) -> dict:
        """Every random decision for the batch `images`, as a dict of per-image tensors (the RNG advances)."""
        import tensorflow as tf

        c, rng = self.config, self._rng
        shape = tf.shape(images)
        n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

        def uniform(lo, hi, dtype=tf.float32):
            return rng.uniform([n], lo, hi, dtype=dtype)

        drawn = {}
        if c.geometric:
            flip = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if c.flip else tf.ones([n])
            angle = uniform(-c.rotation, c.rotation) * (math.pi / 180)
            scale = 1.0 / uniform(1 - c.zoom, 1 + c.zoom)  # output→input: zooming in samples a smaller area
            cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
            # input = centre + A (output - centre), A = scale · R(angle) · diag(flip, 1)
            a00, a01, a10, a11 = cos * flip, -sin, sin * flip, cos
            cx, cy = (width - 1) / 2, (height - 1) / 2
            drawn["transform"] = tf.stack([a00, a01, cx - a00 * cx - a01 * cy,
                                           a10, a11, cy - a10 * cx - a11 * cy,
                                           tf.zeros([n]), tf.zeros([n])], axis=1)
        if c.colour:
            yiq = tf.constant(_RGB_TO_YIQ)
            hue = uniform(-c.hue, c.hue) * (2 * math.pi)
            cos, sin, zero, one = tf.cos(hue), tf.sin(hue), tf.zeros([n]), tf.ones([n])
            rotate = tf.reshape(tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], axis=1), [-1, 3, 3])
            drawn["colour"] = tf.linalg.inv(yiq)[None] @ rotate @ yiq[None]
            drawn["offset"] = uniform(-c.brightness, c.brightness) * 255
        if c.blur_prob > 0:
            blur = uniform(0.0, 1.0) < c.blur_prob
            drawn["blur_sigma"] = tf.where(blur, uniform(*c.blur_sigma), 0.0)
        if c.downscale_prob > 0:
            shrink = uniform(0.0, 1.0) < c.downscale_prob
            drawn["downscale"] = tf.where(shrink, uniform(*c.downscale_factor), 1.0)
        if c.jpeg_prob > 0:
            drawn["jpeg"] = uniform(0.0, 1.0) < c.jpeg_prob
            drawn["jpeg_quality"] = uniform(c.jpeg_quality[0], c.jpeg_quality[1] + 1, dtype=tf.int32)
        return drawn

    def apply(self, images, drawn: dict):
        """The batch transformed as `drawn` says, rounded back to uint8 (the model's input type)."""
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        if "transform" in drawn:
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x, transforms=drawn["transform"], output_shape=tf.shape(x)[1:3], fill_value=0.0,
                interpolation="BILINEAR", fill_mode="REFLECT")
        if "colour" in drawn:
            x = tf.einsum("bij,bhwj->bhwi", drawn["colour"], x) + drawn["offset"][:, None, None, None]
        if "blur_sigma" in drawn:
            x = _blur(x, drawn["blur_sigma"], radius=math.ceil(2 * self.config.blur_sigma[1]))
        if "downscale" in drawn:
            x = _downscale(x, drawn["downscale"])
        x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
        if "jpeg" in drawn:
            def recompress(args):
                image, apply, quality = args
                return tf.cond(apply, lambda: tf.image.adjust_jpeg_quality(image, quality), lambda: image)

            x = tf.map_fn(recompress, (x, drawn["jpeg"], drawn["jpeg_quality"]),
                          fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
        return x

    def __call__(self, images):
        return self.apply(images, self.draw(images))


def _downscale(x, factor):
    """Each image shrunk to `factor` of its side and scaled back to its size (factor 1: unchanged)."""
    import tensorflow as tf

    size = tf.shape(x)[1:3]

    def one(args):
        image, f = args

        def shrink():
            small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * f), tf.int32), 1)
            return tf.image.resize(tf.image.resize(image, small, "area"), size, "bilinear")

        return tf.cond(f < 1.0, shrink, lambda: image)

    return tf.map_fn(one, (x, factor), fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))


def _blur(x, sigma, radius: int):
    """Separable Gaussian blur with a sigma per image (0: unchanged), edges reflected."""
    import tensorflow as tf

    shape = tf.shape(x)
    n, channels = shape[0], shape[0] * 3
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    safe = tf.maximum(sigma, 1e-3)[:, None]
    kernel = tf.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = tf.where(sigma[:, None] > 0, kernel, tf.cast(tf.equal(offsets, 0.0), tf.float32)[None])
    kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)
    kernel = tf.repeat(kernel, 3, axis=0)  # [n·3, taps]: channel order of the stacked batch below
    # the batch becomes the channels of one image, so each image gets its own depthwise kernel
    stacked = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, shape[1], shape[2], channels])
    stacked = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    taps = 2 * radius + 1
    stacked = tf.nn.depthwise_conv2d(stacked, tf.reshape(tf.transpose(kernel), [taps, 1, channels, 1]),
                                     [1, 1, 1, 1], "VALID")
    stacked = tf.nn.depthwise_conv2d(stacked, tf.reshape(tf.transpose(kernel), [1, taps, channels, 1]),
                                     [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(stacked, [shape[1], shape[2], n, 3]), [2, 0, 1, 3])
