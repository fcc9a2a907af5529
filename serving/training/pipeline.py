"""The `tf.data` input pipelines: the training batches of a run, and plain batches of crops to score.

A run's batches are one dataset over all the epochs it has left, so Keras traces its step once. The crops of epoch
`e` and their augmentation are drawn from (seed, e, batch index) alone: a run resumed at epoch `e` sees exactly the
batches it would have seen, and parallel workers in any order give the same ones.
"""

from __future__ import annotations

import numpy as np

from serving.augment import AugmentConfig
from serving.errors import InvalidInputError
from serving.training.config import ClassWeight
from serving.training.data import TrainingData


def epoch_order(n_train: int, steps: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The training crops of epoch `epoch`, in order: whole shuffles of all of them drawn from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    need = steps * batch_size
    return np.concatenate([rng.permutation(n_train) for _ in range(-(-need // n_train))])[:need]


def class_weights(labels: np.ndarray, class_weight: ClassWeight) -> np.ndarray:
    """The weight of a REAL and of a FAKE crop: `balanced` makes both classes weigh as much in all."""
    counts = np.bincount(labels, minlength=2)
    if min(counts) == 0:
        raise InvalidInputError(
            f"the training split needs both REAL and FAKE crops, got {counts[0]} real, {counts[1]} fake"
        )
    return len(labels) / (2 * counts) if class_weight == "balanced" else np.ones(2)


def training_batches(
    data: TrainingData,
    batch_size: int,
    steps: int,
    augment_config: AugmentConfig,
    seed: int,
    class_weight: ClassWeight,
    epochs: range,
):
    """The `steps` batches of (uint8 images, labels, sample weights) of each epoch in `epochs`, one epoch after
    the other (epochs are 0-based)."""
    import tensorflow as tf

    from serving.augment import augment, batch_rng

    per_class = class_weights(data.labels[: data.n_train], class_weight)
    label_table = tf.constant(data.labels.astype(np.float32))
    weight_table = tf.constant(per_class[data.labels].astype(np.float32))
    faces = data.faces

    def load_numpy(epoch: np.ndarray, batch: np.ndarray, index: np.ndarray) -> np.ndarray:
        images = faces[np.sort(index)][np.argsort(np.argsort(index))]  # memory map read in file order
        if not augment_config.enabled:
            return images
        return augment(images, augment_config, batch_rng(seed, int(epoch), int(batch)))

    @tf.autograph.experimental.do_not_convert  # plain TF ops and numpy: nothing for AutoGraph to rewrite
    def load(epoch, batch, index):
        images = tf.numpy_function(load_numpy, [epoch, batch, index], tf.uint8, stateful=False)
        images.set_shape([None, *faces.shape[1:]])
        return images, tf.gather(label_table, index), tf.gather(weight_table, index)

    orders = [epoch_order(data.n_train, steps, batch_size, seed, e).reshape(steps, batch_size) for e in epochs]
    ds = tf.data.Dataset.from_tensor_slices(
        (
            np.repeat(np.array(epochs, np.int64), steps),
            np.tile(np.arange(steps, dtype=np.int64), len(epochs)),
            np.concatenate(orders) if orders else np.zeros((0, batch_size), np.int64),
        )
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)  # deterministic order; each batch's draws its own
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(faces: np.ndarray, index: np.ndarray, labels: np.ndarray | None, batch_size: int):
    """(images[, labels]) batches of `faces[index]`, in order; `labels` are those of `index`, in its order."""
    import tensorflow as tf

    if labels is not None and len(labels) != len(index):
        raise ValueError(f"{len(labels)} labels for {len(index)} crops")

    @tf.autograph.experimental.do_not_convert
    def load(i):
        images = tf.numpy_function(lambda j: faces[j], [i], tf.uint8, stateful=False)
        images.set_shape([None, *faces.shape[1:]])
        return images

    ds = tf.data.Dataset.from_tensor_slices(index).batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if labels is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(labels.astype(np.float32)).batch(batch_size))
    return ds.prefetch(tf.data.AUTOTUNE)


class _Inference:
    """`model(images, training=False)`, as an object: TensorFlow keys its "frequent retracing" warning by the traced
    function's code, which a lambda or a method would share across every model scored in a process."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images):
        return self.model(images, training=False)


def predict_faces(model, faces: np.ndarray, index: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`model`'s scores of `faces[index]`, float32, in `index` order (one graph, traced once)."""
    import tensorflow as tf

    score = tf.function(_Inference(model), input_signature=[tf.TensorSpec([None, *faces.shape[1:]], tf.uint8)])
    scores = [
        np.asarray(score(images), np.float32).reshape(-1) for images in eval_dataset(faces, index, None, batch_size)
    ]
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)
