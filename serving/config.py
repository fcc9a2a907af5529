"""Settings of the model side, read from `MESOSCAN_*` environment variables; and the check of that environment.

Each package has its settings class (`ServingSettings` here, `ScannerSettings`, `ServerSettings`); all read the one
`MESOSCAN_` namespace. An entry point builds the classes it needs once with `load` and passes them down. `load`
first checks the whole environment: a `MESOSCAN_*` name that no package knows (a typo such as `MESOSCAN_FRAMEZ`), or
a value a class refuses, is a `SettingsError` whose message is one line naming the variable and what it allows.
The names of every package come from the `mesoscan.settings` entry points (pyproject.toml), so this module, at the
bottom of the import arrows, knows them without importing `scanner` or `server`.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import platformdirs
import pydantic_settings
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "MESOSCAN_"
SECTIONS = "mesoscan.settings"
"""The entry-point group naming each package's settings class."""

DEVELOPMENT_NAMES = {
    "MESOSCAN_SHARED_DIR": "the shared data the test suite and CI read (tests/conftest.py, .ci/run)",
    "MESOSCAN_CHROMIUM": "the browser the test suite drives (tests/support/browser.py)",
    "MESOSCAN_SCREENSHOTS": "where the page tests save screenshots (tests/test_server_page.py)",
    "MESOSCAN_FUZZ_EXAMPLES": "examples per operation of the API fuzz test (tests/test_server_schemathesis.py)",
}
"""Names the test suite reads, not the packages: known, so a developer's shell may export them."""

Backend = Literal["embedded", "tfserving-grpc", "tfserving-rest"]
S = TypeVar("S", bound=BaseSettings)


class SettingsError(ValueError):
    """An unknown `MESOSCAN_*` variable or a bad value: the message is one line naming it and what is allowed."""


def _default_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("mesoscan")) / "models"


class ServingSettings(BaseSettings):
    """Where model files live and how faces are scored.

    Every field reads the environment variable of the same name with the `MESOSCAN_` prefix,
    e.g. `MESOSCAN_MODEL_BACKEND=tfserving-grpc`.
    """

    # Names of the other packages share the namespace: `load` checks them all, each class ignores the others'.
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", protected_namespaces=())
    read_directly: ClassVar[Mapping[str, str]] = {}
    """`MESOSCAN_*` names this package reads from `os.environ` itself (no field): known to the check."""

    models_dir: Path = Field(default_factory=_default_models_dir)
    """Where fetched model files are stored (`<models_dir>/<group>/<file>`)."""
    models_mirror: str | None = None
    """A directory or an http(s) URL base laid out like `<mirror>/<group>/<file>`, tried before upstream."""
    model: str = "meso4_dfdc"
    """The registry name used when a command is given no `--model`."""
    model_backend: Backend = "embedded"
    tfserving_url: str = "localhost:8500"
    """`host:port` for gRPC, `http://host:port` for REST."""
    batch_size: int = Field(default=32, ge=1, le=1024)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    """Retries of a download, or of a model server call that found the server unavailable (gRPC: at most 4)."""
    model_retry_backoff_s: float = Field(default=0.25, gt=0, le=10)
    """Model server calls: the pause between retries; it doubles with each further retry, up to 8 times this."""
    models_timeout_s: float = Field(default=30.0, gt=0)
    """Socket timeout when fetching model files."""
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    """Quality of the JPEG crops the REST backend sends."""
    rest_image_format: Literal["jpeg", "png"] = "jpeg"
    """How the REST backend encodes faces for the `jpeg` signature (which decodes both): JPEG is about 15 KB a face
    but moves scores slightly (measured: up to 0.08 on the shared test crops, mean 0.01); PNG is lossless, so
    REST scores equal gRPC's, at about 4× the payload."""


# --- the check of the environment ----------------------------------------------------------------------------------


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The `MESOSCAN_*` names settings class `cls` reads: one per field, and those it reads directly."""
    return {PREFIX + name.upper() for name in cls.model_fields} | set(getattr(cls, "read_directly", {}))


@functools.cache
def known_names() -> frozenset[str]:
    """Every `MESOSCAN_*` name of every installed package (the `mesoscan.settings` entry points)."""
    names = set(DEVELOPMENT_NAMES) | env_names(ServingSettings)
    for entry in entry_points(group=SECTIONS):
        names |= env_names(entry.load())
    return frozenset(names)


def _unknown(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}?" if close else "the settings are listed in docs/configuration.md"
    return f"unknown setting {name} ({hint})"


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise SettingsError when `environ` (default: this process's) holds a `MESOSCAN_*` name no package knows."""
    environ = os.environ if environ is None else environ
    known = known_names()
    unknown = sorted(n for n in environ if n.upper().startswith(PREFIX) and n.upper() not in known)
    if unknown:
        raise SettingsError("; ".join(_unknown(n, known) for n in unknown))


_SECRET = re.compile(r"TOKEN|PASSWORD|SECRET|KEY|URL")
_FIELD = re.compile(r'field "(\w+)"')


def _problem(error: Mapping) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a check across fields: its message names the variables
        return f"bad settings: {message}"
    name = PREFIX + str(error["loc"][0]).upper()
    given = error.get("input")
    shown = f"={given!r}" if isinstance(given, str) and len(given) <= 60 and not _SECRET.search(name) else ""
    return f"bad setting {name}{shown}: {message[:1].lower()}{message[1:]}"


def load(cls: type[S], **values) -> S:
    """Settings `cls` read from the environment (`values` win over it), after `check_environment`.

    Raises SettingsError, one line, for an unknown `MESOSCAN_*` name or a value `cls` refuses."""
    check_environment()
    try:
        return cls(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_problem(e) for e in exc.errors(include_url=False))) from None
    except pydantic_settings.SettingsError as exc:  # a list (JSON) setting that does not parse
        field = _FIELD.search(str(exc))
        name = PREFIX + field.group(1).upper() if field else "a MESOSCAN_* list setting"
        raise SettingsError(f'bad setting {name}: expected a JSON list, e.g. ["a", "b"]') from None
