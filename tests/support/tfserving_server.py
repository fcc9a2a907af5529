"""A stand-in for TensorFlow Serving's model server (whose binary cannot be installed here), for tests and benchmarks.

It speaks TF Serving's real protocols and answers from exported SavedModels under `--model-base DIR`
(`DIR/<name>/<version>/`, loaded with `tf.saved_model.load`):

* gRPC: `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and `ModelService.GetModelStatus`,
  built on tensorflow-serving-api's generated servicers, with TF Serving's status codes and messages;
* REST: `/v1/models/<name>[/versions/<v>|/labels/<l>][:predict|/metadata]`, row (`instances`) and columnar
  (`inputs`) requests, `{"b64": ...}` strings, `{"predictions": ...}`/`{"outputs": ...}` answers and
  `{"error": ...}` with TF Serving's HTTP codes.

Which versions are served follows TF Serving: the latest version of each model directory, or the models, version
policies and labels of `--model-config-file` (base paths are rebased onto `--model-base`, as a volume mount would).

Run it in its own process (TensorFlow and fork do not mix)::

    python -m tests.support.tfserving_server --model-base DIR --grpc-port P --rest-port Q [--delay-ms D]

Port 0 picks a free port. Once listening it prints `tfserving_server ready grpc=HOST:P rest=http://HOST:Q`.
`start_server()` does all that from a test.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
READY = "tfserving_server ready"
WAITING = "tfserving_server loaded, waiting for"
INT32_MAX = 2**31 - 1
DEFAULT_SIGNATURE = "serving_default"

# TF Serving's http_server.cc: gRPC status code → HTTP status.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# TF Serving's http_rest_api_util.cc.
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)


class StatusError(Exception):
    """A failed request: a gRPC status code name and TF Serving's message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# --- the models -----------------------------------------------------------------------------------------------


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    signature_defs: dict  # name → tensorflow.SignatureDef
    functions: dict  # name → concrete function of the loaded SavedModel


@dataclass
class ModelStore:
    """The servables of each model (by version) and its version labels."""

    models: dict[str, dict[int, Servable]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        if label:
            version = self.labels.get(name, {}).get(label)
            if version is None:
                raise invalid(f"Unrecognized servable version label: {label}")
        versions = self.models.get(name, {})
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        if not versions or (version is not None and version not in versions):
            raise StatusError("NOT_FOUND", f"Servable not found for request: {request}")
        return versions[version if version is not None else max(versions)]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[int]:
        """The versions GetModelStatus reports (all AVAILABLE: this server loads before it listens)."""
        if label:
            version = self.resolve(name, label=label).version
        versions = self.models.get(name, {})
        if version is not None:
            if version not in versions:
                raise StatusError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [version]
        if not versions:
            raise StatusError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(versions)

    def predict(self, servable: Servable, signature: str, inputs: dict, output_filter=()) -> dict:
        """Run `signature` on numpy `inputs`, TF Serving's checks first; numpy outputs by alias."""
        import numpy as np
        import tensorflow as tf

        signature = signature or DEFAULT_SIGNATURE
        sig = servable.signature_defs.get(signature)
        if sig is None or signature not in servable.functions:
            raise StatusError("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
        expected = sorted(sig.inputs)
        if len(inputs) != len(expected):
            raise invalid(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(expected)}}})"
            )
        tensors = {}
        for position, (alias, array) in enumerate(sorted(inputs.items())):
            if alias not in sig.inputs:
                raise invalid(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{','.join(expected)}}}."
                )
            dtype = tf.dtypes.as_dtype(sig.inputs[alias].dtype)
            given = tf.string if array.dtype == object or array.dtype.kind in "SU" else tf.dtypes.as_dtype(array.dtype)
            if given != dtype:
                raise invalid(f"Expects arg[{position}] to be {dtype.name} but {given.name} is provided")
            tensors[alias] = tf.constant(array, dtype=dtype)
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs "
                    f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}."
                )
        try:
            outputs = servable.functions[signature](**tensors)
        except tf.errors.OpError as exc:
            raise StatusError(_grpc_code_name(exc.error_code), _op_error_message(exc.message)) from None
        except (TypeError, ValueError) as exc:  # shape or dtype refused by the concrete function
            raise invalid(str(exc).splitlines()[0]) from None
        wanted = set(output_filter) or set(outputs)
        return {alias: np.asarray(value) for alias, value in outputs.items() if alias in wanted}


def _op_error_message(message: str) -> str:
    """The runtime's own words, as TF Serving reports them, without eager execution's wrapping."""
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip() and not line.startswith(("Graph execution error", "Detected at node", "<stack traces"))
    ]
    return re.sub(r"\s*\[Op:\w+\]$", "", " ".join(lines)) or message


def invalid(message: str) -> StatusError:
    return StatusError("INVALID_ARGUMENT", message)


def _grpc_code_name(code: int) -> str:
    import grpc

    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


def load_store(model_base: Path | None, config_file: Path | None) -> ModelStore:
    """Load the servables TF Serving would serve for `--model-base` and `--model-config-file`."""
    store = ModelStore()
    if config_file is not None:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        config = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
        for entry in config.model_config_list.config:
            base = model_base / Path(entry.base_path).name if model_base else Path(entry.base_path)
            versions = _available_versions(base)
            policy = entry.model_version_policy.WhichOneof("policy_choice")
            if policy == "specific":
                chosen = [v for v in versions if v in set(entry.model_version_policy.specific.versions)]
            elif policy == "all":
                chosen = versions
            else:
                chosen = versions[-(entry.model_version_policy.latest.num_versions or 1) :]
            store.models[entry.name] = {v: _load(entry.name, v, base / str(v)) for v in chosen}
            for label, version in entry.version_labels.items():
                if version not in store.models[entry.name]:
                    raise SystemExit(
                        f"model {entry.name}: label {label!r} refers to version {version}, which is not available"
                    )
            store.labels[entry.name] = dict(entry.version_labels)
    elif model_base is not None:
        for directory in sorted(p for p in model_base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = _available_versions(directory)
            if versions:
                store.models[directory.name] = {
                    versions[-1]: _load(directory.name, versions[-1], directory / str(versions[-1]))
                }
    return store


def _available_versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file())


def _load(name: str, version: int, path: Path) -> Servable:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    loaded = tf.saved_model.load(str(path))
    print(f"loaded {name} version {version} from {path}", file=sys.stderr, flush=True)
    return Servable(name, version, path, dict(saved.meta_graphs[0].signature_def), dict(loaded.signatures))


# --- gRPC -----------------------------------------------------------------------------------------------------


def _model_spec_args(spec) -> dict:
    which = spec.WhichOneof("version_choice")
    return {
        "name": spec.name,
        "version": spec.version.value if which == "version" else None,
        "label": spec.version_label if which == "version_label" else None,
    }


def _tensor_proto(array):
    """numpy → TensorProto as TF Serving answers: float outputs in `float_val`, the rest via make_tensor_proto."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    if array.dtype == np.float32:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tf.TensorShape(array.shape).as_proto())
        proto.float_val.extend(array.ravel().tolist())
        return proto
    return tf.make_tensor_proto(array)


def grpc_server(store: ModelStore, address: str, delay_s: float):
    """A started gRPC server with TF Serving's services; returns (server, bound port)."""
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def abort(context, status: StatusError):
        context.abort(grpc.StatusCode[status.code], status.message)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's method names)
            time.sleep(delay_s)
            try:
                servable = store.resolve(**_model_spec_args(request.model_spec))
                inputs = {}
                for alias, proto in request.inputs.items():
                    try:
                        inputs[alias] = tf.make_ndarray(proto)
                    except (TypeError, ValueError):
                        raise invalid(f"tensor parsing error: {alias}") from None
                signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
                outputs = store.predict(servable, signature, inputs, list(request.output_filter))
            except StatusError as status:
                abort(context, status)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
            for alias, array in outputs.items():
                response.outputs[alias].CopyFrom(_tensor_proto(array))
            return response

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                for item in request.metadata_field:
                    if item != "signature_def":
                        raise invalid(f"Metadata field {item} is not supported")
                if not request.metadata_field:
                    raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
                servable = store.resolve(**_model_spec_args(request.model_spec))
            except StatusError as status:
                abort(context, status)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in servable.signature_defs.items():
                signatures.signature_def[name].CopyFrom(sig)
            response.metadata["signature_def"].Pack(signatures)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                if not request.HasField("model_spec"):
                    raise invalid("Missing ModelSpec")
                versions = store.status(**_model_spec_args(request.model_spec))
            except StatusError as status:
                abort(context, status)
            return _status_response(get_model_status_pb2, versions)

    # TF Serving raises gRPC's message size limits to the maximum (server.cc): a 64-face batch is 12.6 MB.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[("grpc.max_receive_message_length", INT32_MAX), ("grpc.max_send_message_length", INT32_MAX)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port


def _status_response(get_model_status_pb2, versions: list[int]):
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in versions:
        status = response.model_version_status.add(
            version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
        )
        status.status.SetInParent()  # error_code OK, as TF Serving reports a healthy version
    return response


# --- REST -----------------------------------------------------------------------------------------------------


def _decode_strings(value):
    """JSON values of a string input → nested lists of bytes (`{"b64": ...}` decoded, text UTF-8 encoded)."""
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid('JSON object: does not have named input: b64 (expected {"b64": ...})')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if isinstance(value, str):
        return value.encode()
    raise invalid(f"JSON Value: {json.dumps(value)[:80]} not formatted correctly for a string")


def _json_array(value, dtype):
    import numpy as np
    import tensorflow as tf

    tf_dtype = tf.dtypes.as_dtype(dtype)
    if tf_dtype == tf.string:
        decoded = _decode_strings(value)
        array = np.empty(_shape_of(decoded), dtype=object)
        array[...] = decoded
        return array
    try:
        return np.asarray(value, dtype=tf_dtype.as_numpy_dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"JSON Value not formatted correctly for {tf_dtype.name}: {exc}") from None


def _shape_of(value) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _is_named(value) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def rest_predict(store: ModelStore, servable: Servable, body: bytes) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid("JSON Value: Is not object")
    signature = doc.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature, str):
        raise invalid("'signature_name' key must be a string value.")
    sig = servable.signature_defs.get(signature)
    if sig is None:
        raise invalid(f'Serving signature name: "{signature}" not found in signature def')
    aliases = sorted(sig.inputs)
    if "instances" in doc and "inputs" in doc:
        raise invalid("Not expecting both 'inputs' and 'instances' keys")
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise invalid("Expecting 'instances' to be a non-empty list/array")
        if len(aliases) == 1 and not _is_named(rows[0]):
            values = {aliases[0]: rows}
        else:
            if not all(_is_named(row) and set(row) == set(aliases) for row in rows):
                raise invalid(f"Expecting each instance to be an object with the named inputs {{{','.join(aliases)}}}")
            values = {alias: [row[alias] for row in rows] for alias in aliases}
    elif "inputs" in doc:
        columns = doc["inputs"]
        if _is_named(columns):
            values = columns
        elif len(aliases) == 1:
            values = {aliases[0]: columns}
        else:
            raise invalid(f"Expecting 'inputs' to be an object with the named inputs {{{','.join(aliases)}}}")
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
    for alias in values:
        if alias not in sig.inputs:
            raise invalid(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(aliases)}}}."
            )
    arrays = {alias: _json_array(v, sig.inputs[alias].dtype) for alias, v in values.items()}
    outputs = store.predict(servable, signature, arrays)
    plain = {alias: _json_value(array, alias) for alias, array in outputs.items()}
    if "instances" in doc:
        if len(plain) == 1:
            return {"predictions": next(iter(plain.values()))}
        size = len(next(iter(plain.values())))
        return {"predictions": [{alias: v[i] for alias, v in plain.items()} for i in range(size)]}
    return {"outputs": next(iter(plain.values())) if len(plain) == 1 else plain}


def _json_value(array, alias: str):
    """numpy → JSON-ready lists; string outputs named `*_bytes` are base64-encoded as TF Serving does."""
    import numpy as np

    if array.dtype == object:
        if alias.endswith("_bytes"):
            return np.frompyfunc(lambda b: {"b64": base64.b64encode(b).decode()}, 1, 1)(array).tolist()
        return np.frompyfunc(lambda b: b.decode(errors="replace"), 1, 1)(array).tolist()
    return array.tolist()


def rest_handler(store: ModelStore, delay_s: float) -> type[BaseHTTPRequestHandler]:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_status_pb2

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def log_message(self, format: str, *args) -> None:  # quiet, like TF Serving at default verbosity
            pass

        def _handle(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            if not re.fullmatch(r"/v1/.*", path, re.IGNORECASE):
                self._reply(404, {"error": f"Not found: {path}"})
                return
            try:
                self._reply(200, self._dispatch(method, path, body))
            except StatusError as status:
                self._reply(HTTP_STATUS[status.code], {"error": status.message})
            except Exception as exc:  # a bug here: answer like TF Serving's INTERNAL rather than drop the connection
                self._reply(HTTP_STATUS["INTERNAL"], {"error": f"{type(exc).__name__}: {exc}"})
                raise

        def _dispatch(self, method: str, path: str, body: bytes) -> dict:
            match = (PREDICT_PATH if method == "POST" else STATUS_PATH).fullmatch(path)
            if match is None:
                raise invalid(f"Malformed request: {method} {path}")
            name, version, label, action = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            if version and label:
                raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
            spec = {
                "name": unquote(name),
                "version": int(version) if version else None,
                "label": unquote(label) if label else None,
            }
            if method == "POST":
                if action.lower() != "predict":
                    raise StatusError("UNIMPLEMENTED", f"this test server implements :predict only, not :{action}")
                time.sleep(delay_s)
                return rest_predict(store, store.resolve(**spec), body)
            if action:
                servable = store.resolve(**spec)
                return {
                    "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                    "metadata": {
                        "signature_def": {
                            "signature_def": {
                                key: json_format.MessageToDict(sig, preserving_proto_field_name=True)
                                for key, sig in servable.signature_defs.items()
                            }
                        }
                    },
                }
            response = _status_response(get_model_status_pb2, store.status(**spec))
            return json_format.MessageToDict(
                response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload, indent=1).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# --- the process ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.tfserving_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-base", type=Path, help="DIR/<name>/<version>/ SavedModels")
    parser.add_argument("--model-config-file", type=Path, help="a ModelServerConfig text file (models.config)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--delay-ms", type=int, default=0, help="sleep this long before each prediction")
    parser.add_argument(
        "--listen-after",
        type=Path,
        help="load the models, then wait until this file exists before listening (a late start)",
    )
    args = parser.parse_args(argv)
    if args.model_base is None and args.model_config_file is None:
        parser.error("give --model-base, --model-config-file or both")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    store = load_store(args.model_base, args.model_config_file)
    if args.listen_after is not None:
        print(f"{WAITING} {args.listen_after}", flush=True)
        while not args.listen_after.exists():
            time.sleep(0.02)
    delay_s = args.delay_ms / 1000
    grpc_srv, grpc_port = grpc_server(store, f"{args.host}:{args.grpc_port}", delay_s)
    if grpc_port == 0:
        raise SystemExit(f"cannot listen for gRPC on {args.host}:{args.grpc_port}")
    http = ThreadingHTTPServer((args.host, args.rest_port), rest_handler(store, delay_s))
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    served = ",".join(f"{name}:{v}" for name, versions in store.models.items() for v in versions)
    print(
        f"{READY} grpc={args.host}:{grpc_port} rest=http://{args.host}:{http.server_address[1]} models={served}",
        flush=True,
    )
    stop.wait()
    http.shutdown()
    grpc_srv.stop(grace=1).wait()
    sys.stdout.flush()
    os._exit(0)  # skip TensorFlow's slow interpreter teardown


# --- for tests --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    log: Path
    grpc_port: int = 0
    rest_port: int = 0
    _lines: queue.Queue = field(default_factory=queue.Queue, repr=False)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def wait_ready(self, timeout: float = 180) -> ServerProcess:
        """Wait for the ready line (and learn the ports)."""
        self.wait_for(READY, timeout)
        return self

    def wait_for(self, prefix: str, timeout: float = 180) -> str:
        """Wait for a line of the server's output that starts with `prefix`; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self._lines.get(timeout=0.2)
                if line.startswith(READY):
                    fields = dict(part.split("=", 1) for part in line.split()[2:])
                    self.grpc_port = int(fields["grpc"].rsplit(":", 1)[1])
                    self.rest_port = int(fields["rest"].rsplit(":", 1)[1])
                if line.startswith(prefix):
                    return line
            if self.process.poll() is not None and self._lines.empty():
                raise RuntimeError(f"test TF Serving exited ({self.process.returncode}):\n{self.log_tail()}")
        self.stop()
        raise RuntimeError(f"test TF Serving printed no {prefix!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    model_base: Path | None = None,
    log: Path | None = None,
    *,
    grpc_port: int = 0,
    rest_port: int = 0,
    delay_ms: int = 0,
    args: tuple[str, ...] = (),
    wait: bool = True,
    timeout: float = 180,
) -> ServerProcess:
    """Start the server in a separate process (stderr to `log`); wait for its ready line unless `wait=False`."""
    import tempfile

    command = [
        sys.executable,
        "-m",
        "tests.support.tfserving_server",
        "--grpc-port",
        str(grpc_port),
        "--rest-port",
        str(rest_port),
        "--delay-ms",
        str(delay_ms),
        *args,
    ]
    if model_base is not None:
        command += ["--model-base", str(model_base)]
    if log is None:
        handle, name = tempfile.mkstemp(prefix="tfserving-", suffix=".log")
        os.close(handle)
        log = Path(name)
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, log, grpc_port, rest_port)

    def pump() -> None:
        for line in process.stdout:
            server._lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return server.wait_ready(timeout) if wait else server


if __name__ == "__main__":
    main()
