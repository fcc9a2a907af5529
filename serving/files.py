"""Files written whole or not at all (a temp file beside the target, fsynced, renamed over it), private temp
directories, and file digests."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which for a moment would apply to every thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block ends, with the permissions an ordinary new file gets; when
    the block raises, `path` is left as it was and the temp file goes. Its `name` is the temp file's path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # not mkstemp's 0600
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as out:
        out.write(data)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(source: Path, path: Path) -> None:
    """Copy `source` to `path` atomically."""
    with open(source, "rb") as src, atomic_writer(path) as out:
        shutil.copyfileobj(src, out, 1 << 20)


@contextmanager
def private_temp_dir(parent: Path | None, prefix: str) -> Iterator[Path]:
    """A new directory only this user can enter, under `parent` (made when missing; None: the system's temp
    directory), removed with all it holds when the block ends, however it ends."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
