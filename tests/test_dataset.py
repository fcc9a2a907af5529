"""Labelled crops: reading both layouts, the cluster-disjoint split, and the uint8 decode cache."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from serving.dataset import (
    LabelledCrop,
    decode_crops,
    file_list_key,
    read_crops,
    split_by_cluster,
    subsample_clusters,
)
from serving.errors import InvalidInputError
from serving.images import load_face
from serving.train import split_crops
from tests.conftest import CROPS_DIR, require_shared


@pytest.fixture(scope="module")
def crops_dir():
    return require_shared(CROPS_DIR)


@pytest.fixture(scope="module")
def train_rows(crops_dir):
    return read_crops(crops_dir, exclude=("test",))


def test_labels_csv_rows_are_found_in_their_split_folder(crops_dir, train_rows):
    test_rows = read_crops(crops_dir, split="test")
    assert len(test_rows) == 100 and len(train_rows) == 30150  # ../shared/data/README.md
    assert [c.row for c in train_rows[:3]] == [1, 2, 3] and test_rows[0].row == 16001
    assert train_rows[16000].row == 16101, "the added rows come after the test rows"
    assert all(c.path.parent.name == "test" and c.path.is_file() for c in test_rows)
    assert all(c.split == "train" and c.path.parent.name == "train" for c in train_rows[:50])
    assert sum(c.fake for c in test_rows) == 50
    first = train_rows[0]  # labels.csv: mulebpmvzo.jpg,REAL,mulebpmvzo,...,train
    assert (first.path.name, first.fake, first.cluster) == ("mulebpmvzo.jpg", 0, "mulebpmvzo")


def test_training_never_sees_test_rows_and_no_cluster_is_on_both_sides(crops_dir):
    train, val = split_crops(crops_dir, val_fraction=0.1, seed=0)
    assert len(train) + len(val) == 30150
    old_train, old_val = split_crops(crops_dir, val_fraction=0.1, seed=0, rows=(1, 16000))
    assert len(old_train) + len(old_val) == 16000 and max(c.row for c in old_train + old_val) == 16000
    assert not {c.split for c in train + val} - {"train"}
    train_clusters, val_clusters = {c.cluster for c in train}, {c.cluster for c in val}
    assert not train_clusters & val_clusters
    assert len(val_clusters) == round(0.1 * 15075)  # 10 % of the 15,075 clusters
    assert len({c.cluster for c in old_val}) == 800  # and of the first 8,000
    assert 0.4 < np.mean([c.fake for c in val]) < 0.6


def test_split_depends_on_seed_and_cluster_names_only(train_rows):
    rows = train_rows[:2000]
    train, val = split_by_cluster(rows, 0.2, seed=7)
    shuffled = rows.copy()
    random.Random(1).shuffle(shuffled)  # noqa: S311 (test data order, not security)
    train2, val2 = split_by_cluster(shuffled, 0.2, seed=7)
    assert {c.path for c in val} == {c.path for c in val2}
    assert {c.path for c in train} == {c.path for c in train2}
    _, val3 = split_by_cluster(rows, 0.2, seed=8)
    assert {c.path for c in val} != {c.path for c in val3}
    assert not {c.cluster for c in train} & {c.cluster for c in val}


def test_split_refuses_impossible_requests(train_rows):
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        split_by_cluster(train_rows[:10], 1.0, seed=0)
    one_cluster = [c for c in train_rows[:10] if c.cluster == train_rows[0].cluster]
    with pytest.raises(InvalidInputError, match="at least 2 clusters"):
        split_by_cluster(one_cluster, 0.5, seed=0)


def test_subsample_takes_whole_clusters(train_rows):
    subset = subsample_clusters(train_rows, 50, seed=3)
    assert len(subset) == 50
    clusters = {c.cluster for c in subset}
    assert sum(c.cluster in clusters for c in train_rows) == 50  # no cluster cut in half


def _write_face(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 30, 3), colour, np.uint8)).save(path)


def test_real_and_fake_folders_with_video_subfolders_as_clusters(tmp_path):
    _write_face(tmp_path / "real" / "a.png", 10)
    _write_face(tmp_path / "real" / "vid1" / "f1.jpg", 20)
    _write_face(tmp_path / "real" / "vid1" / "f2.jpg", 30)
    _write_face(tmp_path / "fake" / "b.jpeg", 40)
    (tmp_path / "fake" / "notes.txt").write_text("not an image")
    crops = read_crops(tmp_path)
    assert [(c.path.name, c.fake, c.cluster) for c in crops] == [
        ("a.png", 0, "real/a"),
        ("f1.jpg", 0, "real/vid1"),
        ("f2.jpg", 0, "real/vid1"),
        ("b.jpeg", 1, "fake/b"),
    ]


def test_bad_crops_folders_get_clear_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="no labelled crops"):
        read_crops(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label\nx.jpg,MAYBE\n")
    with pytest.raises(InvalidInputError, match="neither REAL nor FAKE"):
        read_crops(tmp_path)
    (tmp_path / "labels.csv").write_text("name,label\nx.jpg,REAL\n")
    with pytest.raises(InvalidInputError, match="missing column"):
        read_crops(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,label\nx.jpg,REAL\n")
    with pytest.raises(InvalidInputError, match="missing"):
        decode_crops(read_crops(tmp_path), tmp_path / "cache")


def test_decode_cache_holds_exactly_what_load_face_gives_and_is_reused(tmp_path, train_rows):
    crops = train_rows[:12]
    cache = tmp_path / "cache"
    faces = decode_crops(crops, cache)
    assert isinstance(faces, np.memmap) and faces.shape == (12, 256, 256, 3) and faces.dtype == np.uint8
    for i in (0, 5, 11):
        np.testing.assert_array_equal(faces[i], load_face(crops[i].path))
    [cached] = list(cache.iterdir())
    assert cached.suffix == ".npy" and file_list_key(crops)[:24] in cached.name
    stamp = cached.stat().st_mtime_ns
    again = decode_crops(crops, cache)
    assert cached.stat().st_mtime_ns == stamp  # not decoded again
    np.testing.assert_array_equal(again, faces)
    np.testing.assert_array_equal(decode_crops(crops[:3]), faces[:3])  # no cache: in memory, same pixels


def test_a_changed_file_gets_a_new_cache_entry_and_a_corrupt_one_a_clear_error(tmp_path, train_rows):
    folder = tmp_path / "crops"
    for crop in train_rows[:4]:
        target = folder / ("fake" if crop.fake else "real") / crop.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crop.path, target)
    crops = read_crops(folder)
    key = file_list_key(crops)
    os.utime(crops[0].path, ns=(1, 1))
    assert file_list_key(crops) != key
    crops[1].path.write_bytes(b"not a jpeg at all")
    with pytest.raises(InvalidInputError, match=crops[1].path.name):
        decode_crops(crops, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")), "a failed decode must leave no cache file behind"


def test_labelled_crop_is_still_importable_from_evaluate():
    from serving import evaluate

    assert evaluate.LabelledCrop is LabelledCrop and evaluate.read_crops is read_crops
