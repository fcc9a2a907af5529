"""Face images in and out of the model's input format: RGB uint8, 256×256.

One resize method everywhere (scanning, training, the `jpeg` serving signature, `mesoscan predict`):
centre-crop to a square, then **antialiased bilinear** resampling (a triangle filter widened on
downscale, `keras.ops.image.resize(..., antialias=True)`, i.e. `tf.image.resize` on TensorFlow), rounded
to uint8. Antialiasing matters for faces that are shrunk: plain bilinear aliases the very high-frequency
detail MesoNet looks at.

The scanner resizes its crops with `resize_face_numpy`, the same method in numpy (TensorFlow's
`scale_and_translate` weights, so a scan need not import TensorFlow): within one uint8 level of `resize_face`.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np

from serving.backends.base import check_faces
from serving.contract import IMAGE_SIZE
from serving.errors import InvalidInputError

__all__ = [
    "check_faces",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "load_face",
    "resize_face",
    "resize_face_numpy",
    "resize_faces",
]

RESIZE_METHOD = "centre crop to square, then antialiased bilinear resize to 256×256, rounded to uint8"


def resize_faces(images, size: int = IMAGE_SIZE):
    """[N, H, W, 3] uint8 (any H, W) → [N, size, size, 3] uint8, with MesoScan's one resize method.

    Works eagerly on numpy arrays and inside a traced TensorFlow graph.
    """
    from keras import ops

    resized = ops.image.resize(
        ops.cast(images, "float32"), (size, size), interpolation="bilinear", antialias=True, crop_to_aspect_ratio=True
    )
    return ops.cast(ops.clip(ops.round(resized), 0, 255), "uint8")


def resize_face(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One [H, W, 3] uint8 image → [size, size, 3] uint8 numpy array."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(_compiled_resize(size)(image))


def _square_crop(image: np.ndarray) -> np.ndarray:
    """The centred square of `image`, cut as `keras.ops.image.resize(crop_to_aspect_ratio=True)` cuts it."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


@functools.lru_cache(maxsize=512)  # one entry per crop side seen: bounded for a long-running worker
def _triangle_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TensorFlow's `scale_and_translate` weights (kernel `triangle`, antialias) as (indices, weights), both
    [out_size, span]: output pixel x samples the input at (x + 0.5) / scale, and on downscale the kernel is widened
    by 1 / scale; each output pixel's `span` input pixels are `indices[x]` (zero weights pad shorter spans)."""
    scale = out_size / in_size
    kernel_scale = max(1 / scale, 1.0)
    centres = (np.arange(out_size) + 0.5) / scale
    dense = np.maximum(0.0, 1 - np.abs(np.arange(in_size) + 0.5 - centres[:, None]) / kernel_scale)
    dense /= dense.sum(axis=1, keepdims=True)
    span = min(2 * math.ceil(kernel_scale) + 1, in_size)
    starts = np.clip(np.argmax(dense > 0, axis=1), 0, in_size - span)
    indices = starts[:, None] + np.arange(span)
    return indices, np.take_along_axis(dense, indices, axis=1).astype(np.float32)


def resize_face_numpy(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """`resize_face` in numpy: one [H, W, 3] uint8 image → [size, size, 3] uint8, within one level of it."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    square = _square_crop(np.asarray(image)).astype(np.float32)
    indices, weights = _triangle_weights(square.shape[1], size)
    columns = (square[:, indices] * weights[None, :, :, None]).sum(axis=2)  # [H, size, 3]
    indices, weights = _triangle_weights(square.shape[0], size)
    resized = (columns[indices] * weights[:, :, None, None]).sum(axis=1)  # [size, size, 3]
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


@functools.cache
def _compiled_resize(size: int):
    """`resize_faces` for one image, traced once (about 40 % faster than eager keras.ops on TensorFlow)."""
    import keras
    from keras import ops

    if keras.backend.backend() != "tensorflow":
        return lambda image: ops.convert_to_numpy(resize_faces(image[None], size))[0]
    import tensorflow as tf

    return tf.function(
        lambda image: resize_faces(image[None], size)[0], input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
    )


def decode_image(data: bytes, what: str = "image"):
    """Encoded JPEG/PNG/BMP/GIF bytes → [H, W, 3] uint8 tensor (TensorFlow's decoder, as in the `jpeg` signature)."""
    import tensorflow as tf

    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", str(exc).splitlines()[0]).strip()
        raise InvalidInputError(f"{what}: not a decodable image ({reason[:200]})") from None


def load_face(path: str | Path) -> np.ndarray:
    """A face crop file → [256, 256, 3] uint8, exactly as the `jpeg` signature would see it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror})") from None
    return resize_face(np.asarray(decode_image(data, str(path))))


def encode_jpeg(face: np.ndarray, quality: int = 95) -> bytes:
    """[H, W, 3] uint8 → JPEG bytes (4:4:4 chroma, so a face survives the trip as closely as JPEG allows)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def encode_png(face: np.ndarray) -> bytes:
    """[H, W, 3] uint8 → PNG bytes (lossless)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
