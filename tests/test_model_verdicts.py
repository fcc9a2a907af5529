"""Each model's crop geometry, calibration and `uncertain` band: measured, stored, and applied by every path."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from scanner.config import ScannerSettings
from scanner.faces import crop_face
from scanner.geometry import crop_ratio, measure_crop_margin, padded
from scanner.pipeline import DEFAULT_UNCERTAIN_BAND, Scanner
from serving import calibration
from serving.dataset import read_crops
from serving.registry import AUTHORS_CROP_MARGIN, PACKAGED_WEIGHTS, get_model, load_keras_model, load_raw_model
from tests.conftest import CROPS_DIR, DEFAULT_MODEL, require_shared


def test_platt_scaling_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 20000)
    labels = (rng.uniform(size=truth.size) < truth).astype(int)
    # an over-confident model: its logit is 2.5 times the true one, shifted
    raw = 1 / (1 + np.exp(-(2.5 * np.log(truth / (1 - truth)) - 0.7)))
    fit = calibration.fit_platt(labels, raw)
    assert fit["a"] == pytest.approx(1 / 2.5, rel=0.08) and fit["b"] == pytest.approx(0.7 / 2.5, abs=0.06)
    assert fit["ece_after"] < fit["ece_before"] / 3 and fit["log_loss_after"] < fit["log_loss_before"]
    calibrated = calibration.calibrate(raw, fit)
    assert np.all(np.diff(calibrated[np.argsort(raw)]) >= 0), "calibration must keep the ranking"
    assert calibration.threshold_after(fit, 0.5) == pytest.approx(calibration.calibrate(np.array([0.5]), fit)[0])


def test_the_band_rule_picks_the_smallest_band_that_reaches_the_target():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 2000)
    scores = np.clip(np.where(labels == 1, rng.normal(0.65, 0.15, 4000), rng.normal(0.35, 0.15, 4000)), 0, 1)
    chosen = calibration.choose_band(labels, scores, 0.5, target=0.9)
    assert chosen["target_met"]
    out = chosen["validation"]
    assert out["fake"]["precision"] >= 0.9 and out["real"]["precision"] >= 0.9
    smaller = calibration.label_outcomes(labels, scores, 0.5, chosen["band"] - calibration.BAND_STEP)
    assert min(smaller["fake"]["precision"], smaller["real"]["precision"]) < 0.9, "not the smallest band"
    b = chosen["band"]
    assert out["uncertain"]["n"] == int(np.sum((scores >= 0.5 - b) & (scores < 0.5 + b)))
    # a model at chance cannot reach it: the band keeps at least MIN_DECIDED of the crops decided
    noise = rng.uniform(size=4000)
    weak = calibration.choose_band(labels, noise, 0.5, target=0.9)
    assert not weak["target_met"]
    assert 1 - weak["validation"]["uncertain"]["share"] >= calibration.MIN_DECIDED


def test_the_shipped_models_carry_calibration_band_and_crop_geometry(settings):
    for name in ("meso4_dfdc", "mesoinception4_dfdc"):
        spec = get_model(name, settings)
        meta = json.loads((PACKAGED_WEIGHTS / f"{name}.json").read_text())
        assert spec.calibration["method"] == "platt" and spec.calibration["a"] > 0
        assert spec.uncertain_band == meta["band"]["band"] and 0 <= spec.uncertain_band <= calibration.MAX_BAND
        assert 0.85 <= spec.crop_margin <= 1.15, "the DFDC crops are tight (measured median 0.99)"
        card = (PACKAGED_WEIGHTS / f"{name}.md").read_text()
        for section in ("## Crop geometry", "## Calibration", "## Uncertain band"):
            assert section in card
    authors = get_model("meso4_df", settings)
    assert authors.crop_margin == AUTHORS_CROP_MARGIN and "pipeline.py" in authors.crop_note
    assert authors.calibration is None and authors.uncertain_band is None


def test_every_backend_path_returns_the_calibrated_score(settings):
    spec = get_model(DEFAULT_MODEL, settings)
    faces = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((256, 256)))
            for p in sorted((CROPS_DIR / "test").glob("*.jpg"))[:6]
        ]
    )
    raw = np.asarray(load_raw_model(spec, settings).predict(faces, verbose=0)).reshape(-1)
    served = np.asarray(load_keras_model(spec, settings).predict(faces, verbose=0)).reshape(-1)
    np.testing.assert_allclose(served, calibration.calibrate(raw, spec.calibration), atol=1e-5)
    assert not np.allclose(served, raw, atol=1e-3), "the calibration must change the scores"
    from serving.predictor import get_predictor

    with get_predictor(DEFAULT_MODEL, settings) as predictor:
        np.testing.assert_allclose(predictor.predict(faces), served, atol=1e-5)


@pytest.fixture(scope="module")
def tight_crops():
    crops = read_crops(require_shared(CROPS_DIR), exclude=("test",))
    return [c.path for c in crops[::1500]][:20]


def test_a_scan_cuts_a_face_like_the_training_crop_it_came_from(tight_crops, settings):
    """A shared training crop padded into a frame: the scan's crop of the face with the model's margin has the
    training crop's size (the old fixed 1.3 margin cut a third more around it)."""
    scanner = Scanner(ScannerSettings(), serving_settings=settings)
    margin = scanner.margins[0]
    assert margin == get_model(DEFAULT_MODEL, settings).crop_margin
    ratios, old = [], []
    for path in tight_crops:
        image = np.asarray(Image.open(path).convert("RGB"))
        frame, side = padded(image)
        detections = scanner.detector.detect(frame)
        if not detections:
            continue
        face = max(detections, key=lambda d: d.score)
        ratios.append(crop_face(frame, face, margin).box[2] / side)
        old.append(crop_face(frame, face, 1.3).box[2] / side)
    assert len(ratios) >= 15
    assert np.median(ratios) == pytest.approx(1.0, abs=0.08)
    assert abs(np.median(old) - 1.0) > 0.2


def test_measuring_a_training_set_gives_its_crop_margin(tight_crops):
    from scanner.blazeface import FaceDetector

    detector = FaceDetector("full", 0.5)
    measured = measure_crop_margin(tight_crops, seed=0, detector=detector)
    assert measured["faces_found"] >= 15 and measured["measured"] == len(tight_crops)
    assert 0.85 <= measured["margin"] <= 1.15 and measured["p10"] <= measured["margin"] <= measured["p90"]
    # crops cut looser are measured looser
    image = np.asarray(Image.open(tight_crops[0]).convert("RGB"))
    loose = np.zeros((int(image.shape[0] * 1.4),) * 2 + (3,), np.uint8)
    o = (loose.shape[0] - image.shape[0]) // 2
    loose[o : o + image.shape[0], o : o + image.shape[1]] = image
    assert crop_ratio(loose, detector) > 1.25 * crop_ratio(image, detector)


def test_settings_override_the_models_geometry_and_band(settings):
    scanner = Scanner(ScannerSettings(), serving_settings=settings)
    spec = scanner.predictor.spec
    assert scanner.band() == spec.uncertain_band != DEFAULT_UNCERTAIN_BAND
    overridden = Scanner(ScannerSettings(crop_margin=1.3, uncertain_band=0.05), serving_settings=settings)
    assert overridden.margins == (1.3,) and overridden.band() == 0.05
    assert Scanner(ScannerSettings(), model="meso4_df", serving_settings=settings).band() == DEFAULT_UNCERTAIN_BAND


def test_an_ensemble_of_members_with_different_margins_crops_once_per_margin(tmp_path):
    """Members trained on different geometry: each scores faces cut with its own margin; the ensemble's score is
    the calibrated mean of theirs."""
    from serving.config import ServingSettings
    from serving.registry import ensemble_digest

    settings = ServingSettings(models_dir=tmp_path / "models")  # its own: the session's registry stays as it was
    trained = settings.models_dir / "trained"
    trained.mkdir(parents=True, exist_ok=True)
    base = json.loads((PACKAGED_WEIGHTS / "meso4_dfdc.json").read_text())
    members = []
    for name, margin in (("tight_member", 1.0), ("loose_member", 1.3)):
        shutil.copyfile(PACKAGED_WEIGHTS / base["weights"], trained / f"{name}.weights.h5")
        meta = {**base, "name": name, "weights": f"{name}.weights.h5", "crop": {"margin": margin, "note": "test"}}
        (trained / f"{name}.json").write_text(json.dumps(meta))
        members.append({"name": name, "version": meta["version"], "arch": "meso4", "sha256": meta["sha256"]})
    ensemble = {
        "name": "mixed_ensemble",
        "kind": "ensemble",
        "output": "p_fake",
        "version": 1,
        "members": members,
        "threshold": 0.5,
        "provenance": "test",
        "licence": "test",
        "calibration": {"method": "platt", "a": 1.5, "b": -0.2},
        "crop": {"margin": 1.0, "members": {"tight_member": 1.0, "loose_member": 1.3}},
    }
    (trained / "mixed_ensemble.json").write_text(json.dumps(ensemble))
    assert get_model("mixed_ensemble", settings).weights.sha256 == ensemble_digest(
        ("tight_member", "loose_member"), (base["sha256"], base["sha256"])
    )

    scanner = Scanner(ScannerSettings(), model="mixed_ensemble", serving_settings=settings)
    assert scanner.margins == (1.0, 1.3)
    rng = np.random.default_rng(2)
    tight, loose = (rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8) for _ in range(2))
    member = load_keras_model(get_model("tight_member", settings), settings)
    expected = calibration.calibrate(
        (
            np.asarray(member.predict(tight, verbose=0)).reshape(-1)
            + np.asarray(member.predict(loose, verbose=0)).reshape(-1)
        )
        / 2,
        ensemble["calibration"],
    )
    np.testing.assert_allclose(scanner.score([tight, loose]), expected, atol=1e-5)
    scanner.close()
    same = Scanner(ScannerSettings(crop_margin=1.2), model="mixed_ensemble", serving_settings=settings)
    assert same.margins == (1.2,), "an explicit margin overrides the members' own"


def test_recalibration_keeps_the_weights_and_refits_on_the_recorded_split(settings, tmp_path):
    from serving.train import recalibrate

    spec = get_model(DEFAULT_MODEL, settings)
    result = recalibrate(
        DEFAULT_MODEL,
        require_shared(CROPS_DIR),
        tmp_path / "out",
        settings,
        measure_crop=lambda paths, seed: {"margin": 1.0, "note": f"{len(paths)} crops"},
    )
    meta = result.metadata
    assert meta["sha256"] == spec.weights.sha256, "same weights"
    assert meta["calibration"]["a"] == pytest.approx(spec.calibration["a"], rel=1e-3)
    assert meta["band"]["band"] == pytest.approx(spec.uncertain_band)
    assert meta["threshold"] == pytest.approx(spec.threshold, abs=1e-4)
    assert meta["crop"]["note"].endswith("crops") and int(meta["crop"]["note"].split()[0]) > 10000
    assert replace(spec, calibration=None).calibration is None
