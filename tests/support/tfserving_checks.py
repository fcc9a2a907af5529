"""Checks of TF Serving's two committed config files, `serving/models.config` and `serving/batching.config`.

Both are protobuf text format. `models.config` is a `tensorflow.serving.ModelServerConfig` (the message ships with
tensorflow-serving-api). `batching.config` is a `tensorflow.serving.BatchingParameters`, which the pip package
lacks: its fields are declared here from TF Serving's `session_bundle_config.proto`, so a typo or a value of the
wrong type fails to parse exactly as it would in `tensorflow_model_server --batching_parameters_file`.
"""

from __future__ import annotations

import itertools
from functools import cache

from serving.errors import TFServingConfigError


def parse_models_config(text: str):
    """Parse a `models.config` text into a `ModelServerConfig`; `TFServingConfigError` on any mistake."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise TFServingConfigError(f"models.config: {exc}") from None


# --- batching.config ------------------------------------------------------------------------------------------

# (name, number, type, label) of `message BatchingParameters` in tensorflow_serving/servables/tensorflow/
# session_bundle_config.proto; wrapper types are google.protobuf's.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, ".google.protobuf.Int64Value", "optional"),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", "optional"),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", "optional"),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value", "optional"),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", "optional"),
    ("allowed_batch_sizes", 6, "int64", "repeated"),
    ("pad_variable_length_inputs", 7, "bool", "optional"),
)


@cache
def batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class, built from a descriptor in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    types = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    for name, number, kind, label in _BATCHING_FIELDS:
        field = message.field.add(
            name=name,
            number=number,
            json_name=_camel(name),
            label=types.LABEL_REPEATED if label == "repeated" else types.LABEL_OPTIONAL,
        )
        if kind.startswith("."):
            field.type, field.type_name = types.TYPE_MESSAGE, kind
        else:
            field.type = {"int64": types.TYPE_INT64, "bool": types.TYPE_BOOL}[kind]
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def check_batching_config(text: str, client_batch_size: int | None = None):
    """Parse and check a `batching.config`; return the `BatchingParameters` message.

    Raises `TFServingConfigError` for an unknown field, a value of the wrong type, or settings TF Serving
    rejects at start-up or that would make it refuse MesoScan's requests (`client_batch_size` faces each).
    """
    from google.protobuf import text_format

    try:
        params = text_format.Parse(text, batching_parameters_class()())
    except text_format.ParseError as exc:
        raise TFServingConfigError(f"batching.config: {exc}") from None
    problems = []
    required = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
    problems += [f"{name} is not set" for name in required if not params.HasField(name)]
    max_batch = params.max_batch_size.value
    if params.HasField("max_batch_size") and max_batch < 1:
        problems.append(f"max_batch_size must be >= 1, got {max_batch}")
    if params.HasField("num_batch_threads") and params.num_batch_threads.value < 1:
        problems.append(f"num_batch_threads must be >= 1, got {params.num_batch_threads.value}")
    if params.HasField("max_enqueued_batches") and params.max_enqueued_batches.value < 1:
        problems.append(f"max_enqueued_batches must be >= 1, got {params.max_enqueued_batches.value}")
    if params.batch_timeout_micros.value < 0:
        problems.append(f"batch_timeout_micros must be >= 0, got {params.batch_timeout_micros.value}")
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
            problems.append(f"allowed_batch_sizes must be positive and increasing, got {sizes}")
        if sizes[-1] != max_batch:
            problems.append(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size ({max_batch})")
    if client_batch_size is not None and params.HasField("max_batch_size") and client_batch_size > max_batch:
        problems.append(
            f"max_batch_size {max_batch} is below the client batch size {client_batch_size}: "
            "TF Serving would reject every full request"
        )
    if problems:
        raise TFServingConfigError("batching.config: " + "; ".join(problems))
    return params
