"""What goes in and comes out of a model: uint8 faces, one resize method, fake_probability in the right direction."""

from __future__ import annotations

import numpy as np
import pytest

from serving import mesonet
from serving.config import ServingSettings
from serving.errors import InvalidInputError, UnknownModelError
from serving.images import check_faces, encode_jpeg, load_face, resize_face, resize_face_numpy
from serving.predictor import get_predictor
from tests.conftest import MESONET_DIR, require_shared


@pytest.fixture(scope="module")
def sample_faces():
    images = require_shared(MESONET_DIR / "test_images")
    df = np.stack([load_face(p) for p in sorted((images / "df").glob("*.jpg"))])
    real = np.stack([load_face(p) for p in sorted((images / "real").glob("*.jpg"))])
    return df, real


@pytest.mark.parametrize("name", ["meso4_df", "mesoinception4_df"])
def test_df_weights_call_the_sample_deepfakes_fake_and_the_real_faces_real(name, sample_faces):
    df, real = sample_faces
    with get_predictor(name, ServingSettings()) as predictor:
        fake_scores, real_scores = predictor.predict(df), predictor.predict(real)
    assert predictor.spec.output == "p_real"  # the authors' sigmoid; MesoScan flips it
    assert (fake_scores > 0.5).all(), fake_scores
    assert (real_scores < 0.5).all(), real_scores
    assert fake_scores.min() > real_scores.max()


def test_network_takes_uint8_and_scales_inside():
    model = mesonet.meso4()
    assert model.inputs[0].dtype == "uint8"
    assert tuple(model.inputs[0].shape) == (None, 256, 256, 3)
    scale = model.get_layer("scale")
    assert scale.scale == pytest.approx(1 / 255)
    assert tuple(model.outputs[0].shape) == (None,)


def test_predictor_refuses_anything_but_uint8_faces():
    with get_predictor("meso4_df", ServingSettings()) as predictor:
        faces = np.zeros((2, 256, 256, 3), np.uint8)
        with pytest.raises(InvalidInputError, match="uint8"):
            predictor.predict(faces.astype(np.float32) * 255)
        with pytest.raises(InvalidInputError, match=r"shape \[N, 256, 256, 3\]"):
            predictor.predict(np.zeros((2, 224, 224, 3), np.uint8))
        with pytest.raises(InvalidInputError):
            check_faces(np.zeros((256, 256, 3), np.uint8))


def test_any_number_of_faces_is_split_into_batches(sample_faces, monkeypatch):
    df, real = sample_faces
    rng = np.random.default_rng(0)
    faces = np.concatenate([df, real, rng.integers(0, 256, (9, 256, 256, 3), dtype=np.uint8)])
    settings = ServingSettings(batch_size=4)
    with get_predictor("meso4_df", settings) as predictor:
        sizes = []
        original = predictor._predict_batch
        monkeypatch.setattr(predictor, "_predict_batch", lambda b: sizes.append(len(b)) or original(b))
        batched = predictor.predict(faces)
        assert sizes == [4, 4, 4, 1]
        whole = original(faces)
        assert predictor.predict(faces[:0]).shape == (0,)
    np.testing.assert_allclose(batched, whole, atol=1e-5)
    assert batched.dtype == np.float32


def test_embedded_backend_never_uses_model_predict(monkeypatch):
    """On TensorFlow (every model but Meso-4, which runs in numpy: tests/test_meso4_numpy.py)."""
    with get_predictor("mesoinception4_df", ServingSettings()) as predictor:
        monkeypatch.setattr(predictor.model, "predict", lambda *a, **k: pytest.fail("model.predict was called"))
        assert predictor.predict(np.zeros((3, 256, 256, 3), np.uint8)).shape == (3,)


def test_many_embedded_predictors_in_one_process_trace_without_a_retracing_warning(sample_faces, caplog):
    """`mesoscan evaluate --model a,b,c,d,e,f` scores with six predictors: TensorFlow must not warn of retracing."""
    df, _ = sample_faces
    settings = ServingSettings()
    with caplog.at_level("WARNING", logger="tensorflow"):
        for _ in range(6):
            with get_predictor("mesoinception4_df", settings) as predictor:
                predictor.predict(df[:1])
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match=r"unknown model 'meso5'.*meso4_df.*mesoinception4_f2f"):
        get_predictor("meso5", ServingSettings())


@pytest.mark.parametrize("resize", [resize_face, resize_face_numpy])
def test_resize_is_antialiased(resize):
    """A 1-pixel checkerboard shrunk 4× must come out flat grey; plain bilinear would alias it."""
    board = (np.indices((1024, 1024)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = resize(np.repeat(board[..., None], 3, axis=2))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 2


@pytest.mark.parametrize("resize", [resize_face, resize_face_numpy])
def test_resize_centre_crops_to_a_square_first(resize):
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = (0, 255, 0)  # the centre square is green, the sides red
    image[:, :100] = image[:, 200:] = (255, 0, 0)
    out = resize(image)
    assert (out[..., 1] == 255).all() and (out[..., 0] == 0).all()


@pytest.mark.parametrize("resize", [resize_face, resize_face_numpy])
def test_square_face_at_model_size_is_untouched(resize):
    face = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert np.array_equal(resize(face), face)


def test_numpy_resize_is_within_one_level_of_tensorflows():
    """The scanner's numpy resize against `keras.ops.image.resize`, over random sizes up and down, noise and smooth."""
    rng = np.random.default_rng(4)
    sizes = [(1, 1), (2, 3), (255, 255), (257, 257), (512, 512), (1024, 700)]
    sizes += [tuple(int(v) for v in rng.integers(1, 800, 2)) for _ in range(60)]
    diffs = []
    for i, (h, w) in enumerate(sizes):
        if i % 2:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            image = np.clip(np.cumsum(rng.normal(0, 4, (h, w, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
        diffs.append(np.abs(resize_face_numpy(image).astype(int) - resize_face(image)))
    assert max(d.max() for d in diffs) <= 1
    assert np.mean([d.mean() for d in diffs]) < 1e-3  # off by one only where TensorFlow's float32 rounds the other way


def test_load_face_decodes_like_the_jpeg_signature(tmp_path):
    face = np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    path = tmp_path / "face.jpg"
    path.write_bytes(encode_jpeg(face))
    loaded = load_face(path)
    assert loaded.shape == (256, 256, 3)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(InvalidInputError, match="notes.jpg: not a decodable image"):
        load_face(bad)
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_face(tmp_path / "missing.jpg")
