"""Download model files from a mirror or their upstream URL and verify their pinned sha256."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import BinaryIO

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from serving.config import ServingSettings
from serving.errors import ModelFetchError
from serving.files import atomic_writer, sha256_of


class _MismatchError(Exception):
    """The bytes of a source are not the pinned ones."""


def _session(retries: int) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",)
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def candidate_sources(group: str, filename: str, url: str | None, mirror: str | None) -> list[str]:
    """The mirror first (a directory or a URL base laid out `<mirror>/<group>/<file>`), then upstream."""
    sources = []
    if mirror:
        if mirror.startswith(("http://", "https://")):
            sources.append(f"{mirror.rstrip('/')}/{group}/{filename}")
        else:
            sources.append(str(Path(mirror).expanduser() / group / filename))
    if url:
        sources.append(url)
    return sources


def _copy_to(source: str, out: BinaryIO, settings: ServingSettings) -> None:
    if source.startswith(("http://", "https://")):
        with _session(settings.retries).get(source, stream=True, timeout=settings.models_timeout_s) as r:
            if r.status_code != 200:
                raise OSError(f"HTTP {r.status_code}")
            for chunk in r.iter_content(1 << 16):
                out.write(chunk)
    else:
        if not Path(source).is_file():
            raise OSError("no such file")
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)


def fetch_file(group: str, filename: str, sha256: str, url: str | None, settings: ServingSettings) -> Path:
    """Store `<models_dir>/<group>/<filename>` from the first source whose bytes match `sha256`.

    The file appears atomically, so a concurrent reader never sees half a download.
    """
    target = settings.models_dir / group / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in candidate_sources(group, filename, url, settings.models_mirror):
        try:
            with atomic_writer(target) as out:
                _copy_to(source, out, settings)
                out.flush()
                if (digest := sha256_of(Path(out.name))) != sha256:
                    raise _MismatchError(f"{source}: sha256 {digest} does not match the pinned {sha256}")
            return target
        except _MismatchError as exc:
            failures.append(str(exc))
        except (OSError, requests.RequestException) as exc:
            failures.append(f"{source}: {exc}")
    if not failures:
        raise ModelFetchError(f"{filename}: no source to fetch it from (set MESOSCAN_MODELS_MIRROR)")
    raise ModelFetchError(
        f"could not fetch {filename}:\n  " + "\n  ".join(failures) + "\n"
        f"Check the network, or set MESOSCAN_MODELS_MIRROR to a directory or URL holding {group}/{filename}, "
        f"or copy the file to {target} yourself (its sha256 must be {sha256})."
    )


def fetch_weights(weights, settings: ServingSettings) -> Path:
    """Fetch a registry `WeightsFile`."""
    return fetch_file(weights.group, weights.filename, weights.sha256, weights.url, settings)
