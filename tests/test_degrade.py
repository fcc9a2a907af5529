"""The fixed degradations `mesoscan evaluate --degrade` applies: what each step does, chains, and bad specs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from serving.degrade import Step, chain_text, degrade, parse_chain
from serving.errors import InvalidInputError
from serving.images import load_face
from tests.conftest import CROPS_DIR, require_shared


@pytest.fixture(scope="module")
def faces():
    from serving.dataset import read_crops

    return np.stack([load_face(c.path) for c in read_crops(require_shared(CROPS_DIR), "test")[:4]])


def _detail(images: np.ndarray) -> float:
    return float(np.mean([cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for x in images]))


def test_each_step_takes_away_detail_and_keeps_the_shape(faces):
    before = _detail(faces)
    for spec in ("blur:1.5", "downscale:0.3"):
        out = degrade(faces, parse_chain(spec))
        assert out.shape == faces.shape and out.dtype == np.uint8
        assert _detail(out) < 0.8 * before, spec

    def error(quality: int) -> float:
        return float(np.abs(degrade(faces, parse_chain(f"jpeg:{quality}")).astype(int) - faces).mean())

    assert 0 < error(95) < error(50) < error(10), "lower quality, more of the crop lost"
    assert np.array_equal(degrade(faces, parse_chain("downscale:1")), faces), "the full side is no change"
    untouched = faces.copy()
    degrade(faces, parse_chain("jpeg:30"))
    assert np.array_equal(faces, untouched), "the input is left as it is"


def test_a_chain_runs_in_its_order_and_says_itself(faces):
    chain = parse_chain(" downscale:0.5, jpeg:40 ")
    assert chain == (Step("downscale", 0.5), Step("jpeg", 40)) and chain_text(chain) == "downscale:0.5,jpeg:40"
    one_by_one = degrade(degrade(faces, chain[:1]), chain[1:])
    assert np.array_equal(degrade(faces, chain), one_by_one)
    assert not np.array_equal(degrade(faces, chain), degrade(faces, chain[::-1]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sharpen:2", "unknown step"),
        ("jpeg", "takes a number"),
        ("jpeg:abc", "takes a number"),
        ("jpeg:0", "from 1 to 100"),
        ("jpeg:40.5", "whole number"),
        ("downscale:1.5", "from 0.05 to 1"),
        ("blur:-1", "from 0.1 to 10"),
        ("jpeg:40,", "unknown step"),
    ],
)
def test_bad_specs_are_refused_with_what_is_wrong(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_chain(spec)
