"""TF Serving's `models.config`, rendered from the model registry.

It is protobuf text format of a `tensorflow.serving.ModelServerConfig` (the message ships with
tensorflow-serving-api). The checks of the committed `models.config` and `batching.config` live with their tests
(tests/support/tfserving_checks.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from serving.registry import ModelSpec

MODELS_CONFIG = Path(__file__).with_name("models.config")
BATCHING_CONFIG = MODELS_CONFIG.with_name("batching.config")
"""TF Serving's batching parameters (`--batching_parameters_file`); docker compose copies it next to the models."""
DEFAULT_BASE_PATH = "/models"
STABLE_LABEL = "stable"
"""Every model's version label: `stable` → the registry spec's version."""

MODELS_CONFIG_HEADER = """\
# TF Serving model config for MesoScan (tensorflow_model_server --model_config_file=/models/models.config).
# Generated from the model registry: `mesoscan export --write-config serving/models.config`; do not edit by hand.
# Each model is served at exactly its registry version, also reachable by the label "stable".
"""


def render_models_config(specs: Iterable[ModelSpec], base_path: str = DEFAULT_BASE_PATH) -> str:
    """A `ModelServerConfig` in text format serving each spec at `<base_path>/<name>`, version and label pinned."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for spec in specs:
        entry = config.model_config_list.config.add(
            name=spec.name, base_path=f"{base_path.rstrip('/')}/{spec.name}", model_platform="tensorflow"
        )
        entry.model_version_policy.specific.versions.append(spec.version)
        entry.version_labels[STABLE_LABEL] = spec.version
    return MODELS_CONFIG_HEADER + text_format.MessageToString(config)
