"""SavedModel export in TF Serving's layout (`<out>/<name>/<version>/`): signatures `serving_default` and `jpeg`.

The contract every backend relies on:

* `serving_default`: input `images` uint8 [N, 256, 256, 3] RGB → output `fake_probability` float32 [N];
* `jpeg`: input `jpeg` string [N] (encoded face crops of any size: JPEG, or PNG/BMP/GIF) → `fake_probability` [N].
  Each image is decoded and resized in the graph with `serving.images`' one method, so REST payloads stay small.

Keras 3's `ExportArchive` keeps the input and output names (raw `tf.saved_model.save` would rename them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from serving.config import ServingSettings
from serving.contract import DEFAULT_SIGNATURE, IMAGE_SIZE, IMAGES_INPUT, JPEG_INPUT, JPEG_SIGNATURE, OUTPUT
from serving.registry import get_model, load_keras_model

__all__ = [
    "DEFAULT_SIGNATURE",
    "IMAGES_INPUT",
    "JPEG_INPUT",
    "JPEG_SIGNATURE",
    "OUTPUT",
    "build_archive",
    "export_model",
]


def build_archive(model):
    """An `ExportArchive` of a MesoNet Keras model with the two serving signatures."""
    import keras
    import tensorflow as tf

    from serving.images import decode_image, resize_faces

    def score(images):
        return {OUTPUT: model(images, training=False)}

    def decode_and_resize(data):
        image = decode_image(data)
        image.set_shape([None, None, 3])  # decode_image's shape is unknown; the resize needs the rank
        return resize_faces(image[None])[0]

    def score_encoded(jpeg):
        # One image at a time: the crops of a batch may all differ in size.
        face = tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)
        return score(tf.map_fn(decode_and_resize, jpeg, fn_output_signature=face))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        DEFAULT_SIGNATURE,
        score,
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=IMAGES_INPUT)],
    )
    archive.add_endpoint(
        JPEG_SIGNATURE, score_encoded, input_signature=[tf.TensorSpec([None], tf.string, name=JPEG_INPUT)]
    )
    return archive


def export_model(name: str, out_dir: str | Path, settings: ServingSettings) -> Path:
    """Export registered model `name` to `out_dir/<name>/<version>/`, replacing that version if present.

    The SavedModel is written into a hidden temporary directory beside the version directory (TF Serving
    only watches numeric names) and renamed into place, so a model server never sees half a model.
    """
    spec = get_model(name, settings)
    model = load_keras_model(spec, settings)
    model_dir = Path(out_dir) / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(spec.version)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.version}.tmp-", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
        build_archive(model).write_out(str(staging), verbose=False)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing `target` is moved aside first and removed afterwards."""
    if not target.exists():
        os.rename(staging, target)
        return
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
