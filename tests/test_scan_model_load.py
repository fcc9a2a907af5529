"""A scan that finds its model not loaded loads it beside the fetch and decode (given a second core), and times that
load on its own."""

from __future__ import annotations

import threading

import pytest

from scanner import pipeline
from scanner.config import ScannerSettings
from scanner.pipeline import Scanner
from scanner.verdict import validate
from serving.config import ServingSettings
from tests.conftest import VIDEOS_DIR, require_shared
from tests.support.server_stack import refusing_port

CLIP = VIDEOS_DIR / "ffpp_519_515_DF.mp4"


@pytest.mark.parametrize(("cores", "loader"), [(2, "model-load"), (1, "MainThread")])
def test_first_scan_loads_the_model_in_a_thread_and_times_it_apart(cores, loader, monkeypatch):
    monkeypatch.setattr(pipeline, "_cores", lambda: cores)
    loaded_in = []
    real_model_info = Scanner.model_info

    def model_info(self):
        if self._predictor is None:
            loaded_in.append(threading.current_thread().name)
        return real_model_info(self)

    monkeypatch.setattr(Scanner, "model_info", model_info)
    scanner = Scanner(ScannerSettings(frames=8), model="meso4_df", serving_settings=ServingSettings())
    try:
        cold = scanner.scan_file(require_shared(CLIP))
        warm = scanner.scan_file(CLIP)
    finally:
        scanner.close()
    validate(cold)
    assert cold["status"] == warm["status"] == "done", cold["error"]
    assert loaded_in == [loader]
    assert set(cold["timings_ms"]) == {"fetch", "model_load", "decode", "detect", "classify", "total"}
    assert 0 < cold["timings_ms"]["model_load"] < cold["timings_ms"]["total"]  # numpy Meso-4 may load before a fetch
    assert set(warm["timings_ms"]) == {"fetch", "decode", "detect", "classify", "total"}  # loaded already
    assert cold["model"] == warm["model"] == {"name": "meso4_df", "version": 1, "backend": "embedded"}
    assert cold["verdict"] == warm["verdict"]
    assert cold["timeline"] == warm["timeline"]


@pytest.mark.parametrize("cores", [2, 1])
def test_a_model_that_cannot_load_fails_the_scan(cores, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_cores", lambda: cores)
    (tmp_path / "mirror").mkdir()
    settings = ServingSettings(models_dir=tmp_path / "models", models_mirror=str(tmp_path / "mirror"), retries=0)
    with refusing_port() as port:  # upstream (GitHub) through a proxy that refuses: no network
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("no_proxy", "")
        scanner = Scanner(ScannerSettings(frames=4), model="meso4_df", serving_settings=settings)
        doc = scanner.scan_file(require_shared(CLIP))
        again = scanner.scan_file(CLIP)  # tried again, not remembered
    validate(doc)
    for d in (doc, again):
        assert d["status"] == "failed"
        assert d["error"]["code"] == "model_unavailable" and d["error"]["retryable"] is True
        assert "could not fetch Meso4_DF.h5" in d["error"]["message"]
        assert d["model"] == {"name": "meso4_df", "version": 1, "backend": "embedded"}
        assert ("fetch" in d["timings_ms"]) == (cores > 1)  # one core: it fails before the fetch


def test_an_unknown_model_fails_before_the_fetch():
    doc = Scanner(ScannerSettings(frames=4), model="meso9", serving_settings=ServingSettings()).scan_file(
        require_shared(CLIP)
    )
    validate(doc)
    assert doc["status"] == "failed" and doc["error"]["code"] == "model_unavailable"
    assert "unknown model 'meso9'" in doc["error"]["message"]
    assert "fetch" not in doc["timings_ms"] and doc["source"]["sha256"] is None
