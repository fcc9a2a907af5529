"""Training end to end on a few dozen real crops: train → register → load → predict (→ export), reproducibility,
ensembles, augmentation, and `mesoscan evaluate`'s report."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import re
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from serving.augment import AugmentConfig, Augmenter
from serving.calibration import calibrate
from serving.config import ServingSettings
from serving.dataset import read_crops
from serving.errors import InvalidInputError, WeightsMismatchError
from serving.fetch import sha256_of
from serving.images import load_face
from serving.registry import get_model, is_installed, list_models, load_keras_model, load_raw_model
from serving.train import TrainConfig, register, register_ensemble, train, validation_crops
from serving.training.loop import learning_rate_schedule
from tests.conftest import CROPS_DIR, require_shared

TINY = {
    "arch": "meso4",
    "epochs": 1,
    "batch_size": 8,
    "limit": 48,
    "val_fraction": 0.25,
    "seed": 11,
    "augment": AugmentConfig(blur_prob=0.5, jpeg_prob=0.5),
}


@pytest.fixture(scope="module")
def settings():
    return ServingSettings()  # the test session's own models directory (conftest)


@pytest.fixture(scope="module")
def trained(settings):
    """One tiny model trained through the Python API, one with the same settings through `mesoscan train`."""
    from serving.training.commands import train as train_command

    data = require_shared(CROPS_DIR)
    first = train(TrainConfig(data_dir=data, name="tiny_a", **TINY), None, settings, progress=False)
    result = CliRunner().invoke(
        train_command,
        [
            "--data",
            str(data),
            "--arch",
            "meso4",
            "--name",
            "tiny_b",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--limit",
            "48",
            "--val-fraction",
            "0.25",
            "--seed",
            "11",
            "--blur-prob",
            "0.5",
            "--jpeg-prob",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "registered tiny_b v1" in result.output and "ROC AUC" in result.output
    second = json.loads((settings.models_dir / "trained" / "tiny_b.json").read_text())
    return first.metadata, second


def _weights(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def test_the_registered_files_say_what_was_trained_and_how(trained, settings):
    meta, _ = trained
    folder = settings.models_dir / "trained"
    weights = folder / "tiny_a.weights.h5"
    assert (meta["name"], meta["arch"], meta["output"], meta["version"]) == ("tiny_a", "meso4", "p_fake", 1)
    assert meta["weights"] == weights.name and meta["sha256"] == sha256_of(weights)
    val = meta["metrics"]["validation"]
    assert 0 <= val["roc_auc"] <= 1 and val["n"] == meta["data"]["validation"]["crops"] == 12
    assert meta["threshold"] == val["threshold"] == val["eer_threshold"]
    assert "equal error rate" in meta["threshold_rule"]
    assert "non-commercial research" in meta["licence"].lower()
    training = meta["training"]
    assert training["seed"] == 11 and training["config"]["batch_size"] == 8 and training["epochs_run"] == 1
    assert training["command"].startswith("mesoscan train --data ") and "--limit 48" in training["command"]
    assert meta["data"]["train"]["crops"] == 36 and meta["data"]["split"]["by"] == "cluster"
    card = (folder / "tiny_a.md").read_text()
    for section in (
        "## Intended use",
        "## Data",
        "## Training",
        "## Validation metrics",
        "## Known failure modes",
        "## Terms",
        "non-commercial research",
        training["command"],
    ):
        assert section in card
    assert not list((settings.models_dir / "runs").iterdir()), "the run folder is removed once registered"


def test_validation_split_has_no_cluster_on_both_sides_and_no_test_rows(trained):
    meta, _ = trained
    split = meta["data"]["split"]
    val = validation_crops(CROPS_DIR, split)
    from serving.train import split_crops

    train_crops, val_again = split_crops(CROPS_DIR, split["val_fraction"], split["seed"], split["limit"])
    assert [c.path for c in val] == [c.path for c in val_again]
    assert not {c.cluster for c in train_crops} & {c.cluster for c in val}
    assert {c.split for c in train_crops + val} == {"train"}
    with pytest.raises(InvalidInputError, match="validation split"):
        validation_crops(CROPS_DIR, {**split, "val_clusters_sha256": "0" * 64})


def test_same_seed_gives_the_same_split_and_the_same_weights(trained, settings):
    a, b = trained
    assert a["data"]["split"] == b["data"]["split"]
    assert a["data"]["files_sha256"] == b["data"]["files_sha256"]
    folder = settings.models_dir / "trained"
    wa, wb = _weights(folder / "tiny_a.weights.h5"), _weights(folder / "tiny_b.weights.h5")
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    assert a["threshold"] == b["threshold"]


def test_a_trained_model_predicts_through_the_registry_and_the_embedded_backend(trained, settings):
    from serving.predictor import get_predictor

    spec = get_model("tiny_a", settings)
    assert spec.weights_format == "keras3" and spec.card is not None and is_installed(spec, settings)
    faces = np.stack([load_face(c.path) for c in read_crops(CROPS_DIR, split="test")[:6]])
    with get_predictor("tiny_a", settings) as predictor:
        assert predictor.backend == "embedded"
        scores = predictor.predict(faces)
    assert scores.shape == (6,) and scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    direct = load_keras_model(spec, settings).predict(faces, verbose=0)
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)


def test_a_trained_model_exports_for_tf_serving(trained, settings, tmp_path):
    if importlib.util.find_spec("serving.export") is None:
        pytest.skip("serving.export is not in this checkout yet: the export step of train → export is not tested")
    import tensorflow as tf

    from serving.export import export_model
    from serving.predictor import get_predictor

    path = export_model("tiny_a", tmp_path, settings)
    assert path == tmp_path / "tiny_a" / "1"
    faces = np.stack([load_face(c.path) for c in read_crops(CROPS_DIR, split="test")[:4]])
    served = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(faces))
    with get_predictor("tiny_a", settings) as predictor:
        np.testing.assert_allclose(served["fake_probability"].numpy(), predictor.predict(faces), atol=1e-5)


def test_registering_a_name_again_increments_its_version(trained, settings, tmp_path):
    meta, _ = trained
    folder = settings.models_dir / "trained"
    for expected in (1, 2):
        path = register(tmp_path, meta, weights_source=folder / "tiny_a.weights.h5")
        assert json.loads(path.read_text())["version"] == expected
    assert get_model("tiny_a", settings).version == 1  # the registered one is untouched


def test_an_ensemble_averages_its_members_and_refuses_changed_members(trained, settings, tmp_path):
    from serving.predictor import get_predictor

    result = register_ensemble("tiny_ens", ["tiny_a", "tiny_b"], CROPS_DIR, None, settings)
    meta = result.metadata
    assert meta["kind"] == "ensemble" and [m["name"] for m in meta["members"]] == ["tiny_a", "tiny_b"]
    assert meta["metrics"]["validation"]["n"] == 12 and set(meta["metrics"]["members_validation"]) == {
        "tiny_a",
        "tiny_b",
    }
    assert "## Ensemble" in (settings.models_dir / "trained" / "tiny_ens.md").read_text()
    spec = get_model("tiny_ens", settings)
    assert spec.is_ensemble and spec.threshold == meta["threshold"] and is_installed(spec, settings)
    assert "tiny_ens" in [s.name for s in list_models(settings)]

    faces = np.stack([load_face(c.path) for c in read_crops(CROPS_DIR, split="test")[:5]])
    with get_predictor("tiny_a", settings) as a, get_predictor("tiny_b", settings) as b:
        # the members' calibrated scores, averaged, then the ensemble's own calibration
        expected = calibrate((a.predict(faces) + b.predict(faces)) / 2, spec.calibration)
    assert spec.calibration and get_model("tiny_a", settings).calibration
    with get_predictor("tiny_ens", settings) as ensemble:
        np.testing.assert_allclose(ensemble.predict(faces), expected, rtol=1e-5, atol=1e-6)
    if importlib.util.find_spec("serving.export") is not None:  # one SavedModel: TF Serving serves the mean itself
        import tensorflow as tf

        from serving.export import export_model

        served = tf.saved_model.load(str(export_model("tiny_ens", tmp_path / "export", settings)))
        scores = served.signatures["serving_default"](images=tf.constant(faces))["fake_probability"].numpy()
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(InvalidInputError, match="at least two different"):
        register_ensemble("bad", ["tiny_a", "tiny_a"], CROPS_DIR, None, settings)
    with pytest.raises(InvalidInputError, match="trained by `mesoscan train`"):
        register_ensemble("bad", ["tiny_a", "meso4_df"], CROPS_DIR, None, settings)

    # a member retrained (other weights under the same name) invalidates the ensemble's threshold
    other = ServingSettings(models_dir=tmp_path)
    shutil.copytree(settings.models_dir / "trained", tmp_path / "trained")
    model = load_raw_model(get_model("tiny_b", other), other)
    model.get_layer("dense_2").bias.assign(model.get_layer("dense_2").bias + 1.0)
    model.save_weights(tmp_path / "retrained.weights.h5")
    b_meta = json.loads((tmp_path / "trained" / "tiny_b.json").read_text())
    register(tmp_path / "trained", b_meta, weights_source=tmp_path / "retrained.weights.h5")
    with pytest.raises(WeightsMismatchError, match="tiny_b"):
        load_keras_model(get_model("tiny_ens", other), other)


def test_the_train_command_registers_an_ensemble(trained, settings):
    from serving.training.commands import train as train_command

    args = ["--data", str(CROPS_DIR), "--name", "tiny_cli_ens", "--ensemble", "tiny_a, tiny_b"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "registered tiny_cli_ens v1" in result.output
    meta = json.loads((settings.models_dir / "trained" / "tiny_cli_ens.json").read_text())
    assert [m["name"] for m in meta["members"]] == ["tiny_a", "tiny_b"]
    assert meta["training"]["command"].endswith("--ensemble tiny_a,tiny_b")
    refused = CliRunner().invoke(train_command, [*args, "--arch", "meso4"])
    assert refused.exit_code == 2 and "leave out --arch" in refused.output
    missing = CliRunner().invoke(train_command, args[:4])
    assert missing.exit_code == 2 and "--arch is required" in missing.output


def test_evaluate_writes_metrics_pngs_and_scores_whose_auc_is_sklearns(trained, settings, tmp_path):
    from sklearn.metrics import roc_auc_score

    from serving.cli import evaluate as evaluate_command
    from serving.predictor import get_predictor

    folder = tmp_path / "crops"  # a handful of crops in the real/ and fake/ layout
    for crop in read_crops(CROPS_DIR, split="test")[:12]:
        target = folder / ("fake" if crop.fake else "real") / crop.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crop.path, target)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        evaluate_command, ["--data", str(folder), "--model", "tiny_a,meso4_df", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "tiny_a" in result.output and "meso4_df" in result.output and "ROC AUC" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"tiny_a", "meso4_df"}
    for png in ("roc.png", "hist_tiny_a.png", "hist_meso4_df.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.width > 100
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    labels = np.array([r["label"] == "FAKE" for r in rows])
    crops = read_crops(folder)
    faces = np.stack([load_face(c.path) for c in crops])
    for name, m in metrics.items():
        scores = np.array([float(r[name]) for r in rows])
        assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert m["n"] == 12 and 0 <= m["eer"] <= 1 and m["threshold"] == get_model(name, settings).threshold
        assert m["accuracy"] == pytest.approx(np.mean((scores >= m["threshold"]) == labels))
        with get_predictor(name, settings) as predictor:
            np.testing.assert_allclose(scores, predictor.predict(faces), atol=2e-6)


def test_evaluate_with_tta_and_on_the_recorded_validation_split(trained, settings):
    from serving.evaluate import evaluate_crops, load_crops
    from serving.predictor import get_predictor

    meta, _ = trained
    metrics = evaluate_crops(CROPS_DIR, ["tiny_a", "tiny_b"], split="val", settings=settings)
    assert metrics["tiny_a"]["roc_auc"] == pytest.approx(meta["metrics"]["validation"]["roc_auc"], abs=1e-6)
    assert metrics["tiny_a"]["n"] == 12
    tta = evaluate_crops(CROPS_DIR, ["tiny_a"], split="val", settings=settings, tta=True)["tiny_a"]
    faces = load_crops(validation_crops(CROPS_DIR, meta["data"]["split"]), settings)
    labels = np.array([c.fake for c in validation_crops(CROPS_DIR, meta["data"]["split"])])
    with get_predictor("tiny_a", settings) as predictor:
        scores = (predictor.predict(faces) + predictor.predict(np.ascontiguousarray(faces[:, :, ::-1]))) / 2
    from sklearn.metrics import roc_auc_score

    assert tta["tta"] is True and tta["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    beside = evaluate_crops(CROPS_DIR, ["tiny_a", "meso4_df"], split="val", settings=settings)
    assert beside["meso4_df"]["n"] == beside["tiny_a"]["n"] == 12
    assert beside["tiny_a"]["roc_auc"] == pytest.approx(metrics["tiny_a"]["roc_auc"], abs=1e-9)
    with pytest.raises(InvalidInputError, match="has a recorded validation split"):
        evaluate_crops(CROPS_DIR, ["meso4_df"], split="val", settings=settings)


# --- pieces -----------------------------------------------------------------------------------------------


def _faces(n=6):
    return np.stack([load_face(c.path) for c in read_crops(CROPS_DIR, split="test")[:n]])


def test_augmentation_is_reproducible_and_changes_the_faces():
    faces = _faces()
    full = AugmentConfig(blur_prob=0.5, jpeg_prob=0.5)
    a, b = Augmenter(full, seed=1)(faces), Augmenter(full, seed=1)(faces)
    c = Augmenter(full, seed=2)(faces)
    assert a.dtype == np.uint8 and a.shape == faces.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a.astype(int) - faces).mean() > 5
    np.testing.assert_array_equal(Augmenter(AugmentConfig.none(), 0)(faces), faces)


def test_flip_only_mirrors_exactly_and_jpeg_or_blur_only_keep_geometry():
    faces = _faces(12)
    flipped = Augmenter(dataclasses.replace(AugmentConfig.none(), flip=True), seed=4)(faces)
    mirrored = [np.array_equal(f, x[:, ::-1]) for f, x in zip(flipped, faces, strict=True)]
    same = [np.array_equal(f, x) for f, x in zip(flipped, faces, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and any(mirrored) and any(same)

    blurred = Augmenter(dataclasses.replace(AugmentConfig.none(), blur_prob=1.0, blur_sigma=(1.5, 1.5)), 0)(faces)
    sharpness = lambda x: np.abs(np.diff(x.astype(float), axis=2)).mean()  # noqa: E731
    assert sharpness(blurred) < 0.8 * sharpness(faces)
    assert np.abs(blurred.astype(float).mean() - faces.mean()) < 1  # a blur keeps the brightness

    jpeg = Augmenter(dataclasses.replace(AugmentConfig.none(), jpeg_prob=1.0, jpeg_quality=(10, 10)), 0)(faces)
    diff = np.abs(jpeg.astype(int) - faces)
    assert 1 < diff.mean() < 15


def test_downscale_loses_detail_and_batches_draw_from_seed_epoch_and_index_alone():
    from serving.augment import augment, batch_rng

    faces = _faces(6)
    down = dataclasses.replace(AugmentConfig.none(), downscale_prob=1.0, downscale_factor=(0.3, 0.3))
    shrunk = augment(faces, down, batch_rng(0, 0, 0))
    sharpness = lambda x: np.abs(np.diff(x.astype(float), axis=2)).mean()  # noqa: E731
    assert shrunk.shape == faces.shape and sharpness(shrunk) < 0.8 * sharpness(faces)
    full = AugmentConfig(blur_prob=0.5, jpeg_prob=0.5, downscale_prob=0.5)
    one = augment(faces, full, batch_rng(3, 7, 2))
    np.testing.assert_array_equal(one, augment(faces, full, batch_rng(3, 7, 2)))
    for other in (batch_rng(3, 8, 2), batch_rng(3, 7, 3), batch_rng(4, 7, 2)):
        assert not np.array_equal(one, augment(faces, full, other))


def test_augment_settings_out_of_range_are_refused():
    with pytest.raises(InvalidInputError, match="zoom"):
        AugmentConfig(zoom=1.5)
    with pytest.raises(InvalidInputError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(90, 30))


def test_scoring_many_models_traces_each_once_and_warns_of_nothing():
    """An ensemble's members, a recalibration: TensorFlow warns of "retracing" when five models are scored one
    after the other with `model.predict` (its predict step's code is the same for all); `predict_faces` does not."""
    import logging

    from serving import mesonet
    from serving.training.pipeline import predict_faces

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        faces = _faces(3)
        for _ in range(6):
            model = mesonet.build("meso4", "p_fake")
            scores = predict_faces(model, faces, np.arange(3)[::-1])
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert [w for w in warnings if "retracing" in w] == []
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, model.predict(faces[::-1], verbose=0).reshape(-1), rtol=1e-6, atol=1e-7)


def test_learning_rate_schedules():
    step = learning_rate_schedule(TrainConfig(CROPS_DIR, "meso4", "x"), total_steps=10_000, steps_per_epoch=100)
    assert [float(step(s)) for s in (0, 999, 1000, 2500, 3000, 9000)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-6]
    )
    cosine = learning_rate_schedule(
        TrainConfig(CROPS_DIR, "meso4", "x", schedule="cosine", epochs=10, warmup_epochs=1),
        total_steps=1000,
        steps_per_epoch=100,
    )
    assert float(cosine(0)) == pytest.approx(1e-6)
    assert float(cosine(100)) == pytest.approx(1e-3)
    assert float(cosine(550)) == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-2)
    assert float(cosine(1000)) == pytest.approx(1e-6, rel=1e-3)


def test_training_needs_both_classes_and_enough_crops(tmp_path):
    settings = ServingSettings(models_dir=tmp_path / "models")
    folder = tmp_path / "crops"
    for i, crop in enumerate(read_crops(CROPS_DIR, split="test")[:6]):
        target = folder / "real" / f"{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crop.path, target)
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        train(TrainConfig(folder, "meso4", "x", batch_size=75), None, settings, progress=False)
    with pytest.raises(InvalidInputError, match="both REAL and FAKE"):
        train(TrainConfig(folder, "meso4", "x", batch_size=2), None, settings, progress=False)


def test_evaluate_degrades_the_crops_and_restricts_them_to_rows(trained, settings, tmp_path):
    from sklearn.metrics import roc_auc_score

    from serving.degrade import degrade, parse_chain
    from serving.evaluate import evaluate_crops, load_crops
    from serving.predictor import get_predictor
    from serving.training.data import split_crops

    meta, _ = trained
    val = validation_crops(CROPS_DIR, meta["data"]["split"])
    chain = parse_chain("downscale:0.3,jpeg:20")
    worse = evaluate_crops(CROPS_DIR, ["tiny_a"], split="val", settings=settings, degradation=chain)["tiny_a"]
    with get_predictor("tiny_a", settings) as predictor:
        scores = predictor.predict(degrade(load_crops(val, settings), chain))
    assert worse["degrade"] == "downscale:0.3,jpeg:20" and worse["n"] == len(val)
    assert worse["roc_auc"] == pytest.approx(roc_auc_score([c.fake for c in val], scores), abs=1e-6)

    # a model validated on another split: scored beside tiny_a only on crops it never trained on
    other = json.loads(json.dumps(meta))
    other["name"] = "tiny_other_split"
    other["data"]["split"] = {**meta["data"]["split"], "seed": 20, "limit": None, "rows": [1, 16000]}
    register(
        settings.models_dir / "trained", other, weights_source=settings.models_dir / "trained" / "tiny_a.weights.h5"
    )
    s = other["data"]["split"]
    its_training = {c.path for c in split_crops(CROPS_DIR, s["val_fraction"], s["seed"], s["limit"], (1, 16000))[0]}
    newer = [c for c in val if c.row > 16000]
    assert newer and any(c.path in its_training for c in val), "the tiny split has crops on both sides"
    with pytest.raises(InvalidInputError, match=r"tiny_other_split was validated on another split and trained on"):
        evaluate_crops(CROPS_DIR, ["tiny_a", "tiny_other_split"], split="val", settings=settings)
    both = evaluate_crops(
        CROPS_DIR, ["tiny_a", "tiny_other_split"], split="val", settings=settings, rows=(16001, 30250)
    )
    assert both["tiny_a"]["n"] == both["tiny_other_split"]["n"] == len(newer)
    assert both["tiny_a"]["rows"] == [16001, 30250]
    with pytest.raises(InvalidInputError, match="no crops to evaluate in rows 40000-40001"):
        evaluate_crops(CROPS_DIR, ["tiny_a"], split="val", settings=settings, rows=(40000, 40001))


def test_the_evaluate_command_refuses_bad_degradations_and_crop_options_for_videos(trained):
    from scanner.cli import evaluate as evaluate_command
    from tests.conftest import VIDEOS_DIR

    bad = CliRunner().invoke(evaluate_command, ["--data", str(CROPS_DIR), "--model", "tiny_a", "--degrade", "jpeg:0"])
    assert bad.exit_code == 2 and "quality must be a whole number from 1 to 100" in bad.output
    videos = CliRunner().invoke(evaluate_command, ["--data", str(require_shared(VIDEOS_DIR)), "--rows", "1-2"])
    assert videos.exit_code == 2 and "--rows is for face crops" in videos.output
    for data, step, message in (
        (CROPS_DIR, "h264:30", "h264 is not a step for a crop .*jpeg:Q"),
        (VIDEOS_DIR, "jpeg:40", "jpeg is not a step for a video .*h264:CRF"),
    ):
        refused = CliRunner().invoke(evaluate_command, ["--data", str(data), "--model", "tiny_a", "--degrade", step])
        assert isinstance(refused.exception, InvalidInputError), refused.output
        assert re.search(message, str(refused.exception))
    ok = CliRunner().invoke(
        evaluate_command, ["--data", str(CROPS_DIR), "--split", "val", "--model", "tiny_a", "--degrade", "blur:2"]
    )
    assert ok.exit_code == 0 and "tiny_a" in ok.output, ok.output
