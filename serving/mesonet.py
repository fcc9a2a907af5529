"""MesoNet (Afchar, Nozick, Yamagishi, Echizen, WIFS 2018): Meso-4 and MesoInception-4 in Keras 3.

Both networks read top to bottom as in the authors' `classifiers.py`. Two things are added around them:

* the input is the face crop as RGB uint8, 256×256, and the scaling to [0, 1] happens inside the graph
  (layer `scale`), so no caller can feed 0–255 floats by mistake;
* the output is `fake_probability` of shape [N] (layer `fake_probability`). The authors' sigmoid unit is
  P(real) (classes df=0, real=1); models trained by MesoScan learn P(fake) directly. `output="p_real"`
  turns the former into the latter.

Layer names follow Keras 2's automatic names in a fresh session (`conv2d_1`, `batch_normalization_1`, ...)
in the authors' creation order: the weight loader maps the authors' files onto them by name.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from serving.contract import ARCHS, IMAGE_DTYPE, IMAGE_SIZE, IMAGES_INPUT, OUTPUT, Arch, Output


@keras.saving.register_keras_serializable(package="mesoscan")
class FakeProbability(layers.Layer):
    """[N, 1] sigmoid → [N] fake probability; `from_p_real` flips the authors' P(real)."""

    def __init__(self, from_p_real: bool, **kwargs):
        super().__init__(**kwargs)
        self.from_p_real = from_p_real

    def call(self, p):
        p = ops.squeeze(p, axis=-1)
        return 1.0 - p if self.from_p_real else p

    def get_config(self) -> dict:
        return {**super().get_config(), "from_p_real": self.from_p_real}


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=IMAGE_DTYPE, name=IMAGES_INPUT)
    return images, layers.Rescaling(1.0 / 255, name="scale")(images)


def _classifier_head(x, output: Output, leaky_relu: bool, first: int = 1):
    x = layers.Flatten(name="flatten_1")(x)
    x = layers.Dropout(0.5, name=f"dropout_{first}")(x)
    x = layers.Dense(16, name=f"dense_{first}")(x)
    if leaky_relu:
        x = layers.LeakyReLU(negative_slope=0.1, name="leaky_re_lu_1")(x)
    x = layers.Dropout(0.5, name=f"dropout_{first + 1}")(x)
    x = layers.Dense(1, activation="sigmoid", name=f"dense_{first + 1}")(x)
    return FakeProbability(output == "p_real", name=OUTPUT)(x)


def meso4(output: Output = "p_fake") -> keras.Model:
    """Meso-4: four conv/BN/pool blocks and a 16-unit dense layer.

    The authors' published Meso-4 files hold no LeakyReLU layer after the 16-unit dense layer (their code
    today has one; MesoInception's files do): the files are the ground truth, so the layer is linear here.
    """
    images, x = _inputs()
    for i, (filters, kernel, pool) in enumerate([(8, 3, 2), (8, 5, 2), (16, 5, 2), (16, 5, 4)], start=1):
        x = layers.Conv2D(filters, kernel, padding="same", activation="relu", name=f"conv2d_{i}")(x)
        x = layers.BatchNormalization(name=f"batch_normalization_{i}")(x)
        x = layers.MaxPooling2D(pool, padding="same", name=f"max_pooling2d_{i}")(x)
    return keras.Model(images, _classifier_head(x, output, leaky_relu=False), name="meso4")


def _inception(x, a: int, b: int, c: int, d: int, block: int, first_conv: int):
    """Four parallel branches (1×1; 1×1→3×3; 1×1→3×3 dilated 2; 1×1→3×3 dilated 3), concatenated."""
    n = iter(range(first_conv, first_conv + 7))

    def conv(t, filters, kernel, dilation=1):
        return layers.Conv2D(
            filters, kernel, padding="same", dilation_rate=dilation, activation="relu", name=f"conv2d_{next(n)}"
        )(t)

    x1 = conv(x, a, 1)
    x2 = conv(conv(x, b, 1), b, 3)
    x3 = conv(conv(x, c, 1), c, 3, dilation=2)
    x4 = conv(conv(x, d, 1), d, 3, dilation=3)
    return layers.Concatenate(axis=-1, name=f"concatenate_{block}")([x1, x2, x3, x4])


def mesoinception4(output: Output = "p_fake") -> keras.Model:
    """MesoInception-4: two inception blocks replace Meso-4's first two convolutions."""
    images, x = _inputs()
    for block, (a, b, c, d) in enumerate([(1, 4, 4, 2), (2, 4, 4, 2)], start=1):
        x = _inception(x, a, b, c, d, block=block, first_conv=1 + 7 * (block - 1))
        x = layers.BatchNormalization(name=f"batch_normalization_{block}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"max_pooling2d_{block}")(x)
    for i, pool in [(3, 2), (4, 4)]:
        x = layers.Conv2D(16, 5, padding="same", activation="relu", name=f"conv2d_{12 + i}")(x)
        x = layers.BatchNormalization(name=f"batch_normalization_{i}")(x)
        x = layers.MaxPooling2D(pool, padding="same", name=f"max_pooling2d_{i}")(x)
    return keras.Model(images, _classifier_head(x, output, leaky_relu=True), name="mesoinception4")


def build(arch: Arch, output: Output = "p_fake") -> keras.Model:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return {"meso4": meso4, "mesoinception4": mesoinception4}[arch](output)
