"""serving.files: a file is replaced whole or not at all, with an ordinary file's permissions; private temp
directories go with what they hold; sha256 of a file."""

from __future__ import annotations

import hashlib
import os

import pytest

from serving.files import (
    atomic_copy,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    private_temp_dir,
    sha256_of,
)


def test_a_write_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    atomic_write_bytes(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    seen: list[str] = []

    def write_half() -> None:
        with atomic_writer(target) as out:
            out.write(b"half of the new")
            seen.append(out.name)
            raise RuntimeError("stopped mid-write")

    with pytest.raises(RuntimeError):
        write_half()
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0] != str(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_written_files_get_the_permissions_of_an_ordinary_new_file(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    atomic_copy(plain, tmp_path / "copied")
    mode = plain.stat().st_mode & 0o777
    assert mode != 0o600  # mkstemp's own mode would not pass for an ordinary file's
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == mode
    assert (tmp_path / "copied").stat().st_mode & 0o777 == mode
    assert (tmp_path / "copied").read_bytes() == b"x"


def test_sha256_of_a_file(tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_a_private_temp_dir_is_made_under_its_parent_and_removed_with_its_files(tmp_path):
    parent = tmp_path / "not" / "yet"
    seen: list = []

    def scan_interrupted() -> None:
        with private_temp_dir(parent, "mesoscan-x-") as work:
            seen.append((work, work.stat().st_mode & 0o777))
            (work / "sub").mkdir()
            (work / "sub" / "video.mp4").write_bytes(b"x")
            raise KeyboardInterrupt  # Ctrl-C mid-scan

    with pytest.raises(KeyboardInterrupt):
        scan_interrupted()
    work, mode = seen[0]
    assert work.parent == parent and work.name.startswith("mesoscan-x-") and mode == 0o700
    assert parent.is_dir() and list(parent.iterdir()) == []
