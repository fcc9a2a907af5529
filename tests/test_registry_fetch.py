"""The model registry and `mesoscan models`: fetching with pinned sha256 from a mirror or upstream, clear errors."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from serving.config import ServingSettings
from serving.errors import ModelFetchError, UnknownModelError
from serving.fetch import fetch_file, sha256_of
from serving.registry import BUILTIN, get_model, is_installed, list_models, load_keras_model
from tests.conftest import DEFAULT_MODEL, ROOT, SHARED, require_shared
from tests.support.server_stack import refusing_port

MESO4_DF = get_model("meso4_df", ServingSettings(models_dir=Path("/nonexistent")))


@pytest.fixture(scope="module")
def models_http():
    """The shared models directory served over HTTP on 127.0.0.1 (a URL mirror)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(require_shared(SHARED / "models")))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_builtin_names_and_provenance():
    names = [spec.name for spec in BUILTIN]
    assert names == ["meso4_df", "meso4_f2f", "mesoinception4_df", "mesoinception4_f2f"]
    manifest = (SHARED / "models" / "mesonet" / "MANIFEST.txt").read_text()
    for spec in BUILTIN:
        assert f"{spec.weights.sha256}  {spec.weights.filename}" in manifest
        assert spec.weights.url == f"https://github.com/DariusAf/MesoNet/raw/master/weights/{spec.weights.filename}"
        assert "Apache-2.0" in spec.licence and "WIFS 2018" in spec.provenance
        assert spec.output == "p_real" and spec.threshold == 0.5


def test_fetch_from_a_mirror_directory(tmp_path):
    settings = ServingSettings(models_dir=tmp_path / "models", models_mirror=str(SHARED / "models"))
    assert not is_installed(MESO4_DF, settings)
    path = fetch_file("mesonet", "Meso4_DF.h5", MESO4_DF.weights.sha256, None, settings)
    assert path == tmp_path / "models" / "mesonet" / "Meso4_DF.h5"
    assert sha256_of(path) == MESO4_DF.weights.sha256
    assert is_installed(MESO4_DF, settings)


def test_fetch_from_a_url_mirror(tmp_path, models_http):
    settings = ServingSettings(models_dir=tmp_path, models_mirror=models_http)
    path = fetch_file("mesonet", "Meso4_F2F.h5", get_model("meso4_f2f", settings).weights.sha256, None, settings)
    assert sha256_of(path) == get_model("meso4_f2f", settings).weights.sha256


def test_upstream_is_tried_after_the_mirror(tmp_path, models_http):
    settings = ServingSettings(models_dir=tmp_path / "models", models_mirror=str(tmp_path / "empty-mirror"))
    path = fetch_file("mesonet", "Meso4_DF.h5", MESO4_DF.weights.sha256, f"{models_http}/mesonet/Meso4_DF.h5", settings)
    assert sha256_of(path) == MESO4_DF.weights.sha256


def test_wrong_hash_names_the_file_and_keeps_nothing(tmp_path):
    mirror = tmp_path / "mirror" / "mesonet"
    mirror.mkdir(parents=True)
    (mirror / "Meso4_DF.h5").write_bytes(b"not the authors' weights")
    models_dir = tmp_path / "models"
    settings = ServingSettings(models_dir=models_dir, models_mirror=str(tmp_path / "mirror"))
    with pytest.raises(ModelFetchError) as info:
        fetch_file("mesonet", "Meso4_DF.h5", MESO4_DF.weights.sha256, None, settings)
    message = str(info.value)
    assert "Meso4_DF.h5" in message and "does not match the pinned" in message
    assert MESO4_DF.weights.sha256 in message and "MESOSCAN_MODELS_MIRROR" in message
    assert list((models_dir / "mesonet").iterdir()) == []  # no partial or temp file left


def test_missing_file_and_no_network_say_what_to_do(tmp_path, models_http):
    settings = ServingSettings(models_dir=tmp_path, models_mirror=models_http, retries=0, models_timeout_s=5)
    with refusing_port() as port, pytest.raises(ModelFetchError) as info:
        fetch_file(
            "mesonet", "Nope.h5", MESO4_DF.weights.sha256, f"http://127.0.0.1:{port}/weights/Meso4_DF.h5", settings
        )
    message = str(info.value)
    assert "could not fetch Nope.h5" in message
    assert "HTTP 404" in message  # the mirror does not have it
    assert "Connection refused" in message or "Max retries" in message  # upstream unreachable
    assert "Check the network" in message


def test_scoring_with_a_model_that_is_not_installed_fetches_it(tmp_path):
    from serving.predictor import get_predictor

    settings = ServingSettings(models_dir=tmp_path, models_mirror=str(SHARED / "models"))
    spec = get_model("mesoinception4_f2f", settings)
    assert not is_installed(spec, settings)
    with get_predictor(spec.name, settings):
        assert is_installed(spec, settings)


def test_the_default_model_ships_with_mesoscan_and_scores_offline(tmp_path):
    """A fresh clone scans with no download: the default model's weights are in the package, pinned."""
    from serving.images import load_face
    from serving.predictor import get_predictor

    settings = ServingSettings(models_dir=tmp_path / "empty", models_mirror=None)
    spec = get_model(DEFAULT_MODEL, settings)
    assert spec.weights.packaged_path is not None and spec.weights.packaged_path.is_relative_to(ROOT / "serving")
    assert sha256_of(spec.weights.packaged_path) == spec.weights.sha256 and is_installed(spec, settings)
    face = load_face(sorted(require_shared(SHARED / "models" / "mesonet" / "test_images").rglob("*.jpg"))[0])
    with get_predictor(DEFAULT_MODEL, settings) as predictor:
        assert 0.0 <= float(predictor.predict(face[None])[0]) <= 1.0
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.*")), "something was fetched"


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        get_model("nope", ServingSettings())


def test_a_trained_model_is_registered_from_its_json(tmp_path):
    from serving import mesonet

    settings = ServingSettings(models_dir=tmp_path, models_mirror=str(SHARED / "models"))
    trained = tmp_path / "trained"
    trained.mkdir()
    model = mesonet.meso4()
    model.save_weights(trained / "tiny.weights.h5")
    (trained / "tiny.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "arch": "meso4",
                "output": "p_fake",
                "threshold": 0.42,
                "version": 3,
                "weights": "tiny.weights.h5",
                "sha256": sha256_of(trained / "tiny.weights.h5"),
                "provenance": "test",
                "licence": "test only",
                "metrics": {"val_roc_auc": 0.5},
            }
        )
    )
    spec = get_model("tiny", settings)
    assert [s.name for s in list_models(settings)][-1] == "tiny"
    assert (spec.threshold, spec.version, spec.weights_format) == (0.42, 3, "keras3")
    assert is_installed(spec, settings)
    loaded = load_keras_model(spec, settings)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        assert (a.numpy() == b.numpy()).all()
    missing = replace(spec, weights=replace(spec.weights, packaged_path=tmp_path / "gone.weights.h5"))
    with pytest.raises(ModelFetchError, match="gone.weights.h5 is missing"):
        load_keras_model(missing, settings)


def _mesoscan(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_models_list_and_fetch(tmp_path):
    env = {"MESOSCAN_MODELS_DIR": str(tmp_path), "MESOSCAN_MODELS_MIRROR": str(SHARED / "models")}
    listed = json.loads(_mesoscan("models", "list", "--json", env_extra=env).stdout)
    assert [m["name"] for m in listed][:4] == [s.name for s in BUILTIN]
    assert not any(m["installed"] for m in listed[:4])
    assert all(m["provenance"] and m["licence"] for m in listed)

    fetched = _mesoscan("models", "fetch", "meso4_df", env_extra=env)
    assert fetched.returncode == 0, fetched.stderr
    assert str(tmp_path / "mesonet" / "Meso4_DF.h5") in fetched.stdout
    listed = {m["name"]: m for m in json.loads(_mesoscan("models", "list", "--json", env_extra=env).stdout)}
    assert listed["meso4_df"]["installed"] and not listed["meso4_f2f"]["installed"]

    human = _mesoscan("models", "list", env_extra=env).stdout
    assert "meso4_df" in human and "installed  (default)" in human and "licence: Apache-2.0" in human

    unknown = _mesoscan("models", "fetch", "meso9", env_extra=env)
    assert unknown.returncode == 1 and "error [unknown_model]: unknown model 'meso9'" in unknown.stderr


def test_cli_fetch_failure_is_one_clear_line_per_source(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "mesonet").mkdir(parents=True)
    env = {"MESOSCAN_MODELS_DIR": str(tmp_path / "m"), "MESOSCAN_MODELS_MIRROR": str(mirror)}
    # The upstream URL is GitHub; the guard in conftest covers only this process, so the child gets no network
    # at all: an unroutable proxy on loopback stands in for "no network".
    with refusing_port() as port:
        env |= {"HTTPS_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": "", "no_proxy": "", "MESOSCAN_RETRIES": "0"}
        result = _mesoscan("models", "fetch", "meso4_df", env_extra=env)
    assert result.returncode == 1
    assert "error [model_unavailable]: could not fetch Meso4_DF.h5" in result.stderr
    assert "no such file" in result.stderr and "Traceback" not in result.stderr
