"""The TF Serving backends (gRPC and REST) against the test model server in its own process, compared with embedded.

The server (`tests/support/tfserving_server.py`) serves meso4_df and mesoinception4_df exported once for this
module, with a models.config rendered from the registry (so version labels work as in production).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from serving.config import ServingSettings
from serving.errors import InvalidInputError, ModelNotServedError, ModelUnavailableError, PredictionTimeoutError
from tests.conftest import CROPS_DIR, require_shared
from tests.support.tfserving_server import WAITING, free_port, start_server

MODELS = ("meso4_df", "mesoinception4_df")
BACKENDS = ("tfserving-grpc", "tfserving-rest")
REST_RAW_MAX, REST_RAW_MEAN = 0.2, 0.03
"""REST sends JPEG (quality 95, 4:4:4), which moves MesoNet's scores of the raw faces. Measured on the 100 test
crops: max |Δ| 0.081 (meso4_df) and 0.137 (mesoinception4_df), mean |Δ| 0.010 and 0.014."""

pytestmark = pytest.mark.slow


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    from serving.export import export_model
    from serving.registry import get_model
    from serving.tfserving_config import render_models_config

    base, settings = tmp_path_factory.mktemp("model_base"), ServingSettings()
    for name in MODELS:
        export_model(name, base, settings)
    (base / "models.config").write_text(render_models_config([get_model(name, settings) for name in MODELS]))
    return base


@pytest.fixture(scope="module")
def meso4_only(model_base, tmp_path_factory) -> Path:
    """A model base with meso4_df alone, for the extra servers (they start faster)."""
    base = tmp_path_factory.mktemp("meso4_only")
    (base / "meso4_df").symlink_to(model_base / "meso4_df", target_is_directory=True)
    return base


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "tfserving.log"
    with start_server(model_base, log, args=("--model-config-file", str(model_base / "models.config"))) as proc:
        yield proc


@pytest.fixture(scope="module")
def slow_server(meso4_only, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "tfserving-slow.log"
    with start_server(meso4_only, log, delay_ms=3000) as proc:
        yield proc


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    from serving.images import load_face

    files = sorted(require_shared(CROPS_DIR / "test").glob("*.jpg"))
    return np.stack([load_face(path) for path in files[::10]])  # 10 faces, real and fake


@pytest.fixture(scope="module")
def embedded():
    from serving.predictor import get_predictor

    predictors = {name: get_predictor(name, ServingSettings(batch_size=64)) for name in MODELS}
    yield predictors
    for predictor in predictors.values():
        predictor.close()


def remote(backend: str, url_of, name: str = "meso4_df", spec=None, **settings):
    """A predictor of `backend` for the server `url_of` (a ServerProcess, or (grpc_target, rest_url))."""
    from serving.backends.grpc import GrpcPredictor
    from serving.backends.rest import RestPredictor
    from serving.predictor import get_predictor

    grpc_target, rest_url = (url_of.grpc_target, url_of.rest_url) if hasattr(url_of, "grpc_target") else url_of
    url = grpc_target if backend == "tfserving-grpc" else rest_url
    options = ServingSettings(model_backend=backend, tfserving_url=url, **settings)
    if spec is not None:
        return (GrpcPredictor if backend == "tfserving-grpc" else RestPredictor)(spec, options)
    return get_predictor(name, options)


def jpeg_round_trip(faces: np.ndarray, quality: int = 95) -> np.ndarray:
    """The faces as the `jpeg` signature sees them after the REST backend encoded them."""
    from serving.images import decode_image, encode_jpeg

    return np.stack([np.asarray(decode_image(encode_jpeg(face, quality))) for face in faces])


# --- predictions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_grpc_matches_embedded(server, embedded, faces, name):
    with remote("tfserving-grpc", server, name, batch_size=4) as predictor:
        scores = predictor.predict(faces)
    expected = embedded[name].predict(faces)
    assert scores.dtype == np.float32 and scores.shape == (len(faces),)
    assert np.ptp(expected) > 1e-3
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_rest_matches_embedded_on_the_faces_it_sent(server, embedded, faces, name):
    with remote("tfserving-rest", server, name, batch_size=4) as predictor:
        scores = predictor.predict(faces)
    assert scores.dtype == np.float32 and scores.shape == (len(faces),)
    np.testing.assert_allclose(scores, embedded[name].predict(jpeg_round_trip(faces)), rtol=0, atol=1e-5)
    change = np.abs(scores - embedded[name].predict(faces))
    assert change.max() <= REST_RAW_MAX and change.mean() <= REST_RAW_MEAN, change


def test_rest_with_png_matches_embedded_exactly(server, embedded, faces):
    with remote("tfserving-rest", server, "meso4_df", batch_size=4, rest_image_format="png") as predictor:
        scores = predictor.predict(faces)
    np.testing.assert_allclose(scores, embedded["meso4_df"].predict(faces), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_64_face_batch_goes_in_one_request(server, embedded, faces, backend):
    """64 faces are 12.6 MB of uint8 over gRPC: above gRPC's 4 MB default on both sides."""
    batch = np.concatenate([faces, faces[:, ::-1], faces[:, :, ::-1]] * 3)[:64]
    with remote(backend, server, batch_size=64) as predictor:
        sizes = record_batches(predictor)
        scores = predictor.predict(batch)
    assert sizes == [64]
    reference = batch if backend == "tfserving-grpc" else jpeg_round_trip(batch)
    np.testing.assert_allclose(scores, embedded["meso4_df"].predict(reference), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_faces_are_split_into_batches(server, embedded, faces, backend):
    with remote(backend, server, batch_size=3) as predictor:
        sizes = record_batches(predictor)
        scores = predictor.predict(faces[:7])
        assert sizes == [3, 3, 1]
        empty = predictor.predict(faces[:0])
        assert sizes == [3, 3, 1], "no request for no faces"
    assert empty.dtype == np.float32 and empty.shape == (0,)
    reference = faces[:7] if backend == "tfserving-grpc" else jpeg_round_trip(faces[:7])
    np.testing.assert_allclose(scores, embedded["meso4_df"].predict(reference), rtol=0, atol=1e-5)


def record_batches(predictor) -> list[int]:
    """Record the size of each batch the predictor sends (the real method still runs)."""
    sizes: list[int] = []
    send = predictor._predict_batch

    def recording(batch):
        sizes.append(len(batch))
        return send(batch)

    predictor._predict_batch = recording
    return sizes


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_faces_are_refused_before_sending(server, faces, backend):
    with remote(backend, server) as predictor, pytest.raises(InvalidInputError, match="uint8"):
        predictor.predict(faces.astype(np.float32))


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_the_server_does_not_serve(server, faces, backend):
    from serving.registry import get_model

    registered = ServingSettings()
    with remote(backend, server, spec=get_model("meso4_f2f", registered)) as predictor:  # registered, not served here
        with pytest.raises(ModelNotServedError, match=r"meso4_f2f.*Servable not found for request: Specific"):
            predictor.predict(faces[:2])
        with pytest.raises(ModelNotServedError, match="meso4_f2f"):
            predictor.check()
    with remote(backend, server, spec=dataclasses.replace(get_model("meso4_df", registered), version=7)) as predictor:
        with pytest.raises(ModelNotServedError, match=r"Specific\(meso4_df, 7\)"):
            predictor.predict(faces[:2])
        with pytest.raises(ModelNotServedError, match="Could not find version 7 of model meso4_df"):
            predictor.check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_down_is_unavailable_after_retries_in_bounded_time(backend):
    closed = free_port()
    with remote(
        backend,
        (f"127.0.0.1:{closed}", f"http://127.0.0.1:{closed}"),
        retries=3,
        model_retry_backoff_s=0.1,
        request_timeout_s=20,
    ) as predictor:
        started = time.monotonic()
        with pytest.raises(ModelUnavailableError, match=f"127.0.0.1:{closed}") as caught:
            predictor.predict(np.zeros((2, 256, 256, 3), np.uint8))
        elapsed = time.monotonic() - started
        with pytest.raises(ModelUnavailableError):
            predictor.check()
    assert not isinstance(caught.value, PredictionTimeoutError)
    assert caught.value.code == "model_unavailable"
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_server_started_late_is_reached_by_the_retries(meso4_only, embedded, faces, tmp_path):
    """Both backends call a server that is not listening yet; it starts listening 0.3 s later.

    Three faces (590 KB) exceed gRPC's default per-call retry buffer (256 KiB): without the raised buffer,
    gRPC would not retry the call at all.
    """
    grpc_port, rest_port = free_port(), free_port()
    flag = tmp_path / "listen"
    late = start_server(
        meso4_only,
        tmp_path / "late.log",
        grpc_port=grpc_port,
        rest_port=rest_port,
        args=("--listen-after", str(flag)),
        wait=False,
    )
    outcome: dict = {}
    with late:
        late.wait_for(WAITING)  # models loaded, ports still closed
        predictors = {
            backend: remote(
                backend,
                (f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"),
                retries=4,
                model_retry_backoff_s=1.0,
            )
            for backend in BACKENDS
        }
        callers = [
            threading.Thread(target=lambda b=backend: outcome.update({b: catch_or_score(predictors[b], faces)}))
            for backend in BACKENDS
        ]
        for caller in callers:
            caller.start()
        time.sleep(0.3)  # the first attempts have been refused by now
        assert not outcome, "nothing listens yet"
        flag.touch()
        for caller in callers:
            caller.join(60)
        for predictor in predictors.values():
            predictor.close()
    for backend in BACKENDS:
        assert isinstance(outcome[backend], np.ndarray), outcome[backend]
        reference = faces[:3] if backend == "tfserving-grpc" else jpeg_round_trip(faces[:3])
        np.testing.assert_allclose(outcome[backend], embedded["meso4_df"].predict(reference), rtol=0, atol=1e-5)


def catch_or_score(predictor, faces):
    try:
        return predictor.predict(faces[:3])
    except Exception as exc:
        return exc


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_server_times_out(slow_server, faces, backend):
    with remote(backend, slow_server, request_timeout_s=0.5, retries=3) as predictor:
        predictor.check()  # the server is up: only predictions are slow
        started = time.monotonic()
        with pytest.raises(PredictionTimeoutError, match=r"0\.5 s") as caught:
            predictor.predict(faces[:2])
        elapsed = time.monotonic() - started
    assert caught.value.code == "timeout"
    assert elapsed < 2.5, f"a timed-out call is not retried: {elapsed:.1f} s"


# --- channels and probes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_constructing_a_predictor_opens_nothing(backend):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        predictor = remote(backend, (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"), retries=0, request_timeout_s=1.0)
        with pytest.raises(TimeoutError):
            listener.accept()
        # The first call connects (and fails: nothing answers on this socket), so the check above can fail.
        outcome: dict = {}
        probe = threading.Thread(target=lambda: outcome.update(error=catch(predictor.check)))
        probe.start()
        connection, _ = listener.accept()
        connection.close()
        probe.join(10)
        predictor.close()
    assert isinstance(outcome["error"], ModelUnavailableError), outcome


def catch(call) -> Exception | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def test_grpc_channel_is_remade_after_a_fork(server, faces, monkeypatch):
    import serving.backends.grpc as backend

    with remote("tfserving-grpc", server) as predictor:
        assert predictor._channel is None
        first = predictor.predict(faces[:2])
        parent_channel = predictor._channel
        assert parent_channel is not None
        assert predictor.predict(faces[:2]) is not None and predictor._channel is parent_channel
        child_pid = os.getpid() + 1
        monkeypatch.setattr(backend.os, "getpid", lambda: child_pid)  # as seen in a forked child
        second = predictor.predict(faces[:2])
        assert predictor._channel is not None and predictor._channel is not parent_channel
    np.testing.assert_array_equal(first, second)
    parent_channel.close()


def test_rest_session_is_remade_after_a_fork(server, faces, monkeypatch):
    import serving.backends.rest as backend

    with remote("tfserving-rest", server) as predictor:
        assert predictor._session is None
        first = predictor.predict(faces[:2])
        parent_session = predictor._session
        child_pid = os.getpid() + 1
        monkeypatch.setattr(backend.os, "getpid", lambda: child_pid)
        second = predictor.predict(faces[:2])
        assert predictor._session is not None and predictor._session is not parent_session
    np.testing.assert_array_equal(first, second)
    parent_session.close()


FORK_SCRIPT = """
import json, os, sys
import numpy as np
from serving.config import ServingSettings
from serving.predictor import get_predictor

faces = np.load(sys.argv[3])
report = {}
for backend, url in (("tfserving-grpc", sys.argv[1]), ("tfserving-rest", sys.argv[2])):
    predictor = get_predictor("meso4_df", ServingSettings(model_backend=backend, tfserving_url=url))
    before = predictor.predict(faces)
    inherited = predictor._channel if backend == "tfserving-grpc" else predictor._session
    child = os.fork()
    if child == 0:
        scores = predictor.predict(faces)
        own = predictor._channel if backend == "tfserving-grpc" else predictor._session
        os._exit(0 if own is not inherited and np.array_equal(scores, before) else 3)
    _, status = os.waitpid(child, 0)
    report[backend] = {"child_exit": os.waitstatus_to_exitcode(status),
                       "parent_after": bool(np.array_equal(predictor.predict(faces), before))}
print(json.dumps(report))
"""


def test_a_forked_child_makes_its_own_connection(server, faces, tmp_path):
    """A predictor used before fork works in the child (on a new channel/session) and still in the parent.

    Run in a separate process: pytest's own process, with TensorFlow loaded, is never forked.
    """
    np.save(tmp_path / "faces.npy", faces[:2])
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, server.grpc_target, server.rest_url, str(tmp_path / "faces.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {backend: {"child_exit": 0, "parent_after": True} for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_check_passes_on_a_serving_server(server, backend, name):
    with remote(backend, server, name) as predictor:
        predictor.check()


# --- the command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_command_agrees_with_embedded(server, embedded, backend):
    from serving.images import load_face

    files = sorted(require_shared(CROPS_DIR / "test").glob("*.jpg"))[1:30:7]
    env = {
        **os.environ,
        "MESOSCAN_MODEL_BACKEND": backend,
        "MESOSCAN_MODEL": "meso4_df",
        "MESOSCAN_TFSERVING_URL": server.grpc_target if backend == "tfserving-grpc" else server.rest_url,
    }
    mesoscan = Path(sys.executable).with_name("mesoscan")
    result = subprocess.run(
        [str(mesoscan), "predict", "--json", *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["model"]["backend"] == backend and answer["model"]["name"] == "meso4_df"
    scores = np.array([r["fake_probability"] for r in answer["results"]])
    faces = np.stack([load_face(path) for path in files])
    reference = faces if backend == "tfserving-grpc" else jpeg_round_trip(faces)
    np.testing.assert_allclose(scores, embedded["meso4_df"].predict(reference), rtol=0, atol=1e-5 + 5e-7)


# --- the test server speaks TF Serving's protocols -------------------------------------------------------------


def test_rest_api_formats(server, embedded, faces):
    from serving.images import encode_jpeg

    url = f"{server.rest_url}/v1/models/meso4_df"
    jpegs = [{"b64": base64.b64encode(encode_jpeg(face)).decode()} for face in faces[:3]]
    expected = embedded["meso4_df"].predict(jpeg_round_trip(faces[:3]))

    row = requests.post(f"{url}/labels/stable:predict", json={"signature_name": "jpeg", "instances": jpegs}, timeout=30)
    assert row.status_code == 200 and row.headers["Content-Type"] == "application/json"
    np.testing.assert_allclose(row.json()["predictions"], expected, atol=1e-5)
    named = requests.post(
        f"{url}:predict", json={"signature_name": "jpeg", "instances": [{"jpeg": j} for j in jpegs]}, timeout=30
    )
    np.testing.assert_allclose(named.json()["predictions"], expected, atol=1e-5)
    columnar = requests.post(f"{url}/versions/1:predict", json={"signature_name": "jpeg", "inputs": jpegs}, timeout=30)
    np.testing.assert_allclose(columnar.json()["outputs"], expected, atol=1e-5)
    images = requests.post(f"{url}:predict", json={"instances": faces[:1].tolist()}, timeout=30)
    np.testing.assert_allclose(images.json()["predictions"], embedded["meso4_df"].predict(faces[:1]), atol=1e-5)

    status = requests.get(f"{url}/versions/1", timeout=30).json()
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    metadata = requests.get(f"{url}/metadata", timeout=30).json()
    jpeg_input = metadata["metadata"]["signature_def"]["signature_def"]["jpeg"]["inputs"]["jpeg"]
    assert jpeg_input["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/meso4_df/versions/2", None, 404, "Could not find version 2 of model meso4_df"),
        (
            "POST",
            "/v1/models/meso4_df/labels/canary:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable version label: canary",
        ),
        (
            "POST",
            "/v1/models/meso4_df:predict",
            {"signature_name": "nope", "instances": [1]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("POST", "/v1/models/meso4_df:predict", {"instances": [1], "inputs": [1]}, 400, "Not expecting both"),
        (
            "POST",
            "/v1/models/meso4_df:predict",
            {"signature_name": "jpeg", "instances": [{"b64": "not base64!"}]},
            400,
            "base64",
        ),
        (
            "POST",
            "/v1/models/meso4_df:predict",
            {"signature_name": "jpeg", "instances": [{"b64": base64.b64encode(b"not an image").decode()}]},
            400,
            "Unknown image file format",
        ),
        ("POST", "/v1/models/meso4_df:predict", {"instances": [[[[1, 2, 3]]]]}, 400, "Input to reshape"),
        ("POST", "/v1/models/meso4_df:predict", {"instances": [[[[1, 2, 300]]]]}, 400, "uint8"),
        ("POST", "/v1/models/meso4_df:predict", b"{not json", 400, "JSON Parse error"),
        ("POST", "/v1/models/meso4_df:predict", {"signature_name": "jpeg"}, 400, "Missing 'inputs' or 'instances' key"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("POST", "/v1/models/meso4_df/versions/1/labels/stable:predict", {"instances": [1]}, 400, "Malformed request"),
    ],
)
def test_rest_api_errors(server, method, path, body, status, error):
    payload = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.request(method, server.rest_url + path, timeout=30, **payload)
    assert response.status_code == status
    assert error in response.json()["error"]


def test_grpc_status_codes(server):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "mesoinception4_df"
        request.model_spec.version_label = "stable"
        answer = stub.GetModelStatus(request, timeout=30)
        assert [(s.version, s.state) for s in answer.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]
        request.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelStatus(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request.model_spec.version.value = 1
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelStatus(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "Could not find version 1 of model nope"


def test_grpc_reads_both_tensor_encodings_and_refuses_a_wrong_answer():
    """TF Serving answers floats in `float_val` or, depending on its version and flags, in `tensor_content`."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    from serving.backends.grpc import GrpcPredictor
    from serving.registry import get_model

    predictor = GrpcPredictor(get_model("meso4_df", ServingSettings()), ServingSettings(tfserving_url="127.0.0.1:1"))
    scores = np.array([0.25, 0.5, 0.75], np.float32)
    as_field, as_content = predict_pb2.PredictResponse(), predict_pb2.PredictResponse()
    for response in (as_field, as_content):
        output = response.outputs["fake_probability"]
        output.dtype = types_pb2.DT_FLOAT
        output.tensor_shape.dim.add(size=3)
    as_field.outputs["fake_probability"].float_val.extend(scores.tolist())
    as_content.outputs["fake_probability"].tensor_content = scores.astype("<f4").tobytes()
    np.testing.assert_array_equal(predictor._scores(as_field, 3), scores)
    np.testing.assert_array_equal(predictor._scores(as_content, 3), scores)
    with pytest.raises(ModelUnavailableError, match="3 scores"):
        predictor._scores(as_field, 4)
    with pytest.raises(ModelUnavailableError, match="fake_probability"):
        predictor._scores(predict_pb2.PredictResponse(), 3)
