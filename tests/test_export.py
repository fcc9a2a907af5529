"""SavedModel export: TF Serving's layout, the two signatures as `saved_model_cli` sees and runs them, atomic writes."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import CROPS_DIR, require_shared

SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    """meso4_df exported once, through `mesoscan export`."""
    from serving.cli import export

    base = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(export, ["meso4_df", "--out", str(base)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.strip() == f"meso4_df: {base / 'meso4_df' / '1'}"
    return base


@pytest.fixture(scope="module")
def keras_model():
    from serving.config import ServingSettings
    from serving.registry import get_model, load_keras_model

    settings = ServingSettings()
    return load_keras_model(get_model("meso4_df", settings), settings)


@pytest.fixture(scope="module")
def crop_files() -> list[Path]:
    return sorted(require_shared(CROPS_DIR / "test").glob("*.jpg"))[:6]


def saved_model_cli(*args: str) -> str:
    result = subprocess.run([str(SAVED_MODEL_CLI), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def signature_blocks(show_output: str) -> dict[str, str]:
    parts = re.split(r"^signature_def\['([^']+)'\]:\n", show_output, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def tensor_info(block: str, kind: str, name: str) -> tuple[str, str]:
    match = re.search(rf"{kind}\['{name}'\] tensor_info:\n\s+dtype: (\S+)\n\s+shape: (.+)\n", block)
    assert match, f"no {kind} {name!r} in:\n{block}"
    return match.group(1), match.group(2).strip()


def test_layout_is_tf_servings(model_base):
    model_dir = model_base / "meso4_df"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"], "no temporary directory may be left behind"
    assert (model_dir / "1" / "saved_model.pb").is_file()
    assert (model_dir / "1" / "variables" / "variables.index").is_file()
    assert (model_dir / "1").stat().st_mode & 0o055 == 0o055, "a model server running as another user must read it"


def test_saved_model_cli_shows_the_signatures(model_base):
    blocks = signature_blocks(saved_model_cli("show", "--dir", str(model_base / "meso4_df" / "1"), "--all"))
    assert {"serving_default", "jpeg"} <= set(blocks)

    default = blocks["serving_default"]
    assert tensor_info(default, "inputs", "images") == ("DT_UINT8", "(-1, 256, 256, 3)")
    assert tensor_info(default, "outputs", "fake_probability") == ("DT_FLOAT", "(-1)")
    assert len(re.findall(r"inputs\['", default)) == 1 and len(re.findall(r"outputs\['", default)) == 1

    jpeg = blocks["jpeg"]
    assert tensor_info(jpeg, "inputs", "jpeg") == ("DT_STRING", "(-1)")
    assert tensor_info(jpeg, "outputs", "fake_probability") == ("DT_FLOAT", "(-1)")
    for block in (default, jpeg):
        assert "Method name is: tensorflow/serving/predict" in block


def test_saved_model_cli_runs_serving_default_like_the_keras_model(model_base, keras_model, crop_files, tmp_path):
    from serving.images import load_face

    faces = np.stack([load_face(path) for path in crop_files])
    np.save(tmp_path / "images.npy", faces)
    saved_model_cli(
        "run",
        "--dir",
        str(model_base / "meso4_df" / "1"),
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--inputs",
        f"images={tmp_path / 'images.npy'}",
        "--outdir",
        str(tmp_path / "out"),
        "--overwrite",
    )
    served = np.load(tmp_path / "out" / "fake_probability.npy")
    expected = np.asarray(keras_model(faces, training=False))
    assert served.dtype == np.float32 and served.shape == (len(faces),)
    assert np.ptp(expected) > 1e-3, "the faces should not all score the same"
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_saved_model_cli_runs_jpeg_with_in_graph_decode_and_resize(model_base, keras_model, crop_files, tmp_path):
    """Crops of several sizes and formats, decoded and resized in the graph exactly as `serving.images` does."""
    from serving.images import decode_image, resize_face

    encoded = [path.read_bytes() for path in crop_files[:3]]  # 224×224 JPEG: enlarged
    big = Image.open(crop_files[3]).resize((400, 400))
    encoded.append(_encode(big, "JPEG"))  # shrunk: the antialiased path
    wide = Image.open(crop_files[4]).resize((300, 200))
    encoded.append(_encode(wide, "PNG"))  # not square: centre-cropped; PNG decodes too
    encoded.append(_encode(Image.open(crop_files[5]).resize((256, 256)), "JPEG"))  # already 256×256
    batch = np.empty(len(encoded), dtype=object)
    batch[:] = encoded
    np.save(tmp_path / "jpeg.npy", batch, allow_pickle=True)
    saved_model_cli(
        "run",
        "--dir",
        str(model_base / "meso4_df" / "1"),
        "--tag_set",
        "serve",
        "--signature_def",
        "jpeg",
        "--inputs",
        f"jpeg={tmp_path / 'jpeg.npy'}",
        "--outdir",
        str(tmp_path / "out"),
        "--overwrite",
    )
    served = np.load(tmp_path / "out" / "fake_probability.npy")

    faces = np.stack([resize_face(np.asarray(decode_image(data))) for data in encoded])
    expected = np.asarray(keras_model(faces, training=False))
    assert served.shape == (len(encoded),)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_export_replaces_an_existing_version(model_base, tmp_path, settings):
    from serving.export import export_model

    base = tmp_path / "base"
    first = export_model("meso4_df", base, settings)
    (first / "stale-marker").write_text("from the previous export")
    second = export_model("meso4_df", base, settings)
    assert second == first == base / "meso4_df" / "1"
    assert not (second / "stale-marker").exists()
    assert (second / "saved_model.pb").is_file()
    assert sorted(p.name for p in (base / "meso4_df").iterdir()) == ["1"]


def test_failed_export_keeps_the_previous_version(tmp_path, monkeypatch, settings):
    import serving.export

    base = tmp_path / "base"
    previous = serving.export.export_model("meso4_df", base, settings)
    (previous / "marker").write_text("previous")

    class Failing:
        def write_out(self, path, verbose=False):
            (Path(path) / "saved_model.pb").write_bytes(b"half a model")
            raise OSError("disk full")

    monkeypatch.setattr(serving.export, "build_archive", lambda model: Failing())
    with pytest.raises(OSError, match="disk full"):
        serving.export.export_model("meso4_df", base, settings)
    assert (previous / "marker").read_text() == "previous"
    assert sorted(p.name for p in (base / "meso4_df").iterdir()) == ["1"], "the staging directory is removed"


def test_export_of_an_unknown_model_fails_cleanly(tmp_path, settings):
    from serving.errors import UnknownModelError
    from serving.export import export_model

    with pytest.raises(UnknownModelError, match="no_such_model"):
        export_model("no_such_model", tmp_path / "base", settings)
    assert not (tmp_path / "base").exists()


def test_export_command_needs_a_destination():
    from serving.cli import export

    result = CliRunner().invoke(export, ["meso4_df"])
    assert result.exit_code == 2 and "--out" in result.output
    result = CliRunner().invoke(export, [])
    assert result.exit_code == 2 and "--write-config" in result.output
    result = CliRunner().invoke(export, ["--all", "meso4_df", "--out", "unused"])
    assert result.exit_code == 2 and "not both" in result.output
