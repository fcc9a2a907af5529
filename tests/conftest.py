"""Shared fixtures: an isolated models directory, the shared data, and a guard that keeps tests on loopback."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from pathlib import Path

import pytest

from serving.config import ServingSettings

# Fixtures of the test servers: media (clips, pages, HLS over HTTP) and the gateway stack (Redis, PostgreSQL, Celery).
pytest_plugins = ["tests.support.media_server", "tests.support.server_stack", "tests.support.browser"]

ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The shared data: `MESOSCAN_SHARED_DIR`, else `../shared` beside the repository, else the parent of a
    directory `MESOSCAN_MODELS_MIRROR` (laid out `<shared>/models`)."""
    if os.environ.get("MESOSCAN_SHARED_DIR"):
        return Path(os.environ["MESOSCAN_SHARED_DIR"]).resolve()
    beside = ROOT.parent / "shared"
    mirror = os.environ.get("MESOSCAN_MODELS_MIRROR", "")
    if not beside.is_dir() and mirror and Path(mirror).is_dir():
        return Path(mirror).resolve().parent
    return beside


SHARED = _shared_dir()
MESONET_DIR = SHARED / "models" / "mesonet"
CROPS_DIR = SHARED / "data" / "crops"
VIDEOS_DIR = SHARED / "data" / "videos"
DEFAULT_MODEL: str = ServingSettings.model_fields["model"].default
"""The model scans use when none is named."""


def _loopback(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


class NonLoopbackConnectionError(AssertionError):
    """A test tried to reach beyond this machine."""


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _check(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(str(address[0])):
        raise NonLoopbackConnectionError(f"test tried to connect to {address!r}: tests stay on loopback")


def _guarded_connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host.decode() if isinstance(host, bytes) else str(host)):
        raise NonLoopbackConnectionError(f"test tried to resolve {host!r}: tests stay on loopback")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _loopback_only():
    """Every in-process connection and DNS lookup of the test run must stay on this machine."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(scope="session", autouse=True)
def _sigint_as_on_a_terminal():
    """Ctrl-C behaves as in a terminal even when the suite runs as a shell's background job, which starts with
    SIGINT ignored: Python then installs no handler, `_thread.interrupt_main` does nothing and child processes
    inherit the ignore. A handler set here is reset to the default in children at exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def _models_env(tmp_path_factory):
    """A models directory of the run's own; the shared models as the mirror (CI exports the same)."""
    os.environ["MESOSCAN_MODELS_DIR"] = str(tmp_path_factory.mktemp("models"))
    os.environ.setdefault("MESOSCAN_MODELS_MIRROR", str(SHARED / "models"))
    os.environ.pop("MESOSCAN_MODEL_BACKEND", None)
    os.environ.pop("MESOSCAN_MODEL", None)


@pytest.fixture
def settings():
    from serving.config import ServingSettings

    return ServingSettings()


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: tests need the shared data beside the repository (../shared)")
    return path
