"""TF Serving's config files: models.config against the registry, batching.config against TF Serving's message."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from serving.errors import TFServingConfigError
from serving.tfserving_config import BATCHING_CONFIG, MODELS_CONFIG, render_models_config
from tests.support.tfserving_checks import (
    batching_parameters_class,
    check_batching_config,
    parse_models_config,
)

# `message BatchingParameters` as declared in TF Serving's
# tensorflow_serving/servables/tensorflow/session_bundle_config.proto (comments dropped).
SESSION_BUNDLE_CONFIG_PROTO = """
message BatchingParameters {
  google.protobuf.Int64Value max_batch_size = 1;
  google.protobuf.Int64Value batch_timeout_micros = 2;
  google.protobuf.Int64Value max_enqueued_batches = 3;
  google.protobuf.Int64Value num_batch_threads = 4;
  google.protobuf.StringValue thread_pool_name = 5;
  repeated int64 allowed_batch_sizes = 6;
  bool pad_variable_length_inputs = 7;
}
"""


def test_models_config_parses_with_tf_servings_message():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(MODELS_CONFIG.read_text(), model_server_config_pb2.ModelServerConfig())
    assert config.WhichOneof("config") == "model_config_list"


def test_models_config_serves_every_registered_model_at_its_version(settings):
    from serving.registry import list_models

    config = parse_models_config(MODELS_CONFIG.read_text())
    entries = {entry.name: entry for entry in config.model_config_list.config}
    specs = list_models(settings)
    assert sorted(entries) == sorted(spec.name for spec in specs)
    for spec in specs:
        entry = entries[spec.name]
        assert entry.base_path == f"/models/{spec.name}"
        assert entry.model_platform == "tensorflow"
        assert list(entry.model_version_policy.specific.versions) == [spec.version]
        assert dict(entry.version_labels) == {"stable": spec.version}


def test_models_config_is_what_the_registry_renders(settings):
    """The committed file is exactly `mesoscan export --write-config`'s output: regenerate it, never hand-edit."""
    from serving.registry import list_models

    assert MODELS_CONFIG.read_text() == render_models_config(list_models(settings)), (
        "serving/models.config is out of date: run `mesoscan export --write-config serving/models.config`"
    )


def test_write_config_command(tmp_path, settings):
    from serving.cli import export
    from serving.registry import get_model

    target = tmp_path / "deploy" / "models.config"
    result = CliRunner().invoke(export, ["--write-config", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == MODELS_CONFIG.read_text()

    # Naming models exports them, so --out is needed (the config then lists only them); refused: nothing written.
    result = CliRunner().invoke(export, ["meso4_df", "--write-config", str(target), "--base-path", "/srv/models/"])
    assert result.exit_code == 2 and "--out" in result.output
    assert target.read_text() == MODELS_CONFIG.read_text()

    config = parse_models_config(render_models_config([get_model("meso4_df", settings)], "/srv/models/"))
    assert [(c.name, c.base_path) for c in config.model_config_list.config] == [("meso4_df", "/srv/models/meso4_df")]


@pytest.mark.parametrize(
    ("original", "typo"),
    [
        ('base_path: "/models/meso4_df"', 'base_pth: "/models/meso4_df"'),  # unknown field
        ("versions: 1", "versions: one"),  # wrong value type
        ('key: "stable"\n      value: 1', 'key: "stable"\n      value: "1"'),  # label version as a string
        ('model_platform: "tensorflow"', "model_platform: tensorflow"),  # unquoted string
    ],
)
def test_a_typo_in_models_config_is_rejected(original, typo):
    text = MODELS_CONFIG.read_text()
    assert original in text
    with pytest.raises(TFServingConfigError, match=r"models\.config"):
        parse_models_config(text.replace(original, typo, 1))


# --- batching.config ------------------------------------------------------------------------------------------


def test_batching_message_matches_tf_servings_proto():
    from google.protobuf.descriptor import FieldDescriptor

    declared = {
        name: (int(number), kind, bool(repeated))
        for repeated, kind, name, number in re.findall(
            r"^\s+(repeated )?([\w.]+) (\w+) = (\d+);", SESSION_BUNDLE_CONFIG_PROTO, flags=re.MULTILINE
        )
    }
    fields = batching_parameters_class().DESCRIPTOR.fields_by_name
    assert set(fields) == set(declared)
    scalar = {FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_BOOL: "bool"}
    for name, field in fields.items():
        kind = field.message_type.full_name if field.message_type else scalar[field.type]
        number, declared_kind, repeated = declared[name]
        assert (field.number, kind, field.is_repeated) == (number, declared_kind, repeated), name


def test_committed_batching_config_is_valid_for_batches_of_32_faces():
    from serving.config import ServingSettings

    client_batch = ServingSettings().batch_size
    params = check_batching_config(BATCHING_CONFIG.read_text(), client_batch_size=client_batch)
    assert client_batch == 32
    assert params.max_batch_size.value >= 64, "a 64-face request must fit in one batch"
    assert client_batch in params.allowed_batch_sizes, "a full client batch should not be padded"
    assert params.num_batch_threads.value >= 1 and params.max_enqueued_batches.value >= 1
    assert 0 <= params.batch_timeout_micros.value <= 10_000, "online serving: at most 10 ms of added latency"
    assert not params.pad_variable_length_inputs


@pytest.mark.parametrize(
    ("original", "typo", "message"),
    [
        ("max_batch_size { value: 64 }", "max_batch_sise { value: 64 }", "max_batch_sise"),  # unknown field
        ("num_batch_threads { value: 4 }", "num_batch_threads: 4", "num_batch_threads"),  # wrapper given a scalar
        ("batch_timeout_micros { value: 1000 }", "batch_timeout_micros { value: 1.5 }", "batch_timeout_micros|1.5"),
        ("allowed_batch_sizes: 8", "allowed_batch_sizes: eight", "eight"),
        ("pad_variable_length_inputs: false", "pad_variable_length_inputs: 3", "pad_variable_length_inputs"),
        ("max_enqueued_batches { value: 64 }", "max_enqueued_batches { valu: 64 }", "valu"),
    ],
)
def test_a_typo_in_batching_config_is_rejected(original, typo, message):
    text = BATCHING_CONFIG.read_text()
    assert original in text
    with pytest.raises(TFServingConfigError, match=message):
        check_batching_config(text.replace(original, typo, 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("allowed_batch_sizes: 64", "allowed_batch_sizes: 48"), "must equal max_batch_size"),
        (("allowed_batch_sizes: 16", "allowed_batch_sizes: 4"), "increasing"),
        (("num_batch_threads { value: 4 }", "num_batch_threads { value: 0 }"), "num_batch_threads must be >= 1"),
        (("max_batch_size { value: 64 }", ""), "max_batch_size is not set"),
    ],
)
def test_batching_settings_tf_serving_refuses_are_rejected(change, message):
    text = BATCHING_CONFIG.read_text()
    assert change[0] in text
    with pytest.raises(TFServingConfigError, match=message):
        check_batching_config(text.replace(*change, 1))


def test_client_batches_larger_than_max_batch_size_are_rejected():
    with pytest.raises(TFServingConfigError, match="below the client batch size 128"):
        check_batching_config(BATCHING_CONFIG.read_text(), client_batch_size=128)
