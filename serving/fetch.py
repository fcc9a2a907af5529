"""Download model files from a mirror or their upstream URL and verify their pinned sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from serving.config import ServingSettings
from serving.errors import ModelFetchError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _copy_to(source: str, target: Path, settings: ServingSettings) -> None:
    if source.startswith(("http://", "https://")):
        with _session(settings.retries).get(source, stream=True, timeout=settings.models_timeout_s) as r:
            if r.status_code != 200:
                raise OSError(f"HTTP {r.status_code}")
            with target.open("wb") as f:
                for chunk in r.iter_content(1 << 16):
                    f.write(chunk)
    else:
        if not Path(source).is_file():
            raise OSError("no such file")
        shutil.copyfile(source, target)


def fetch_file(group: str, filename: str, sha256: str, url: str | None, settings: ServingSettings) -> Path:
    """Store `<models_dir>/<group>/<filename>` from the first source whose bytes match `sha256`.

    The file appears atomically, so a concurrent reader never sees half a download.
    """
    target = settings.models_dir / group / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for source in candidate_sources(group, filename, url, settings.models_mirror):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _copy_to(source, tmp, settings)
            digest = sha256_of(tmp)
            if digest != sha256:
                failures.append(f"{source}: sha256 {digest} does not match the pinned {sha256}")
                continue
            tmp.replace(target)
            return target
        except (OSError, requests.RequestException) as exc:
            failures.append(f"{source}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
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
