"""The serving contract: what every model takes and gives, and the SavedModel names TF Serving is called with.

Dependency-free on purpose: the gateway, the remote backends and the exporter all read these names, and only the
exporter and the embedded backend need TensorFlow.
"""

from __future__ import annotations

from typing import Literal

IMAGE_SIZE = 256
"""Faces are RGB, IMAGE_SIZE × IMAGE_SIZE."""
IMAGE_DTYPE = "uint8"
"""Faces go in as 0-255 integers; the network scales them to [0, 1] inside the graph."""
OUTPUT_DTYPE = "float32"

DEFAULT_SIGNATURE = "serving_default"
"""`images` uint8 [N, IMAGE_SIZE, IMAGE_SIZE, 3] → `fake_probability` float32 [N]."""
JPEG_SIGNATURE = "jpeg"
"""`jpeg` string [N] (encoded crops of any size, decoded and resized in the graph) → `fake_probability` [N]."""
IMAGES_INPUT = "images"
JPEG_INPUT = "jpeg"
OUTPUT = "fake_probability"

Arch = Literal["meso4", "mesoinception4"]
ARCHS: tuple[Arch, ...] = ("meso4", "mesoinception4")
Output = Literal["p_real", "p_fake"]
"""What a network's sigmoid means: the authors' P(real), or MesoScan's own P(fake)."""
