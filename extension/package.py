"""Packages the extension for Chromium and Firefox: `python extension/package.py --out dist` (what `make extension`
runs) writes `dist/<browser>/` (loadable unpacked) and `dist/mesoscan-<browser>-<version>.zip`.

`extension/manifest.json` is the Chromium manifest; the Firefox one is derived from it here: a `sidebar_action`
instead of the side panel, `background.scripts` beside `service_worker` (Firefox runs an event page), and
`browser_specific_settings`. The version is the Python package's (pyproject.toml), so both ship the same release.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIPPED = ("manifest.json", "*.html", "*.css", "src/*.js", "icons/*.png", "_locales/*/messages.json")
"""Everything that goes into a package (tests, node_modules and this script stay out)."""
GECKO_ID = "mesoscan@mesoscan.example"
ZIP_TIME = (2025, 1, 1, 0, 0, 0)
"""Fixed timestamps: the same sources give the same zip bytes."""


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def manifest_version(version: str) -> tuple[str, str]:
    """(`version`, `version_name`): browsers take 1–4 dot-separated integers; "0.2.0rc1" ships as 0.2.0."""
    numbers = re.match(r"^(\d+(?:\.\d+){0,3})", version)
    if numbers is None:
        raise ValueError(f"the package version {version!r} does not start with a number")
    return numbers.group(1), version


def manifests(version: str) -> dict[str, dict]:
    base = json.loads((HERE / "manifest.json").read_text())
    number, name = manifest_version(version)
    base["version"] = number
    if name != number:
        base["version_name"] = name
    chrome = json.loads(json.dumps(base))
    firefox = json.loads(json.dumps(base))
    firefox.pop("side_panel", None)
    firefox["permissions"] = [p for p in firefox["permissions"] if p != "sidePanel"]
    firefox["background"] = {"scripts": [base["background"]["service_worker"]], **base["background"]}
    firefox["sidebar_action"] = {
        "default_panel": "sidepanel.html",
        "default_title": "__MSG_extName__",
        "default_icon": base["icons"]["32"],
        "open_at_install": False,
    }
    firefox["browser_specific_settings"] = {
        "gecko": {
            "id": GECKO_ID,
            "strict_min_version": "142.0",
            "data_collection_permissions": {"required": ["none"]},
        }
    }
    return {"chrome": chrome, "firefox": firefox}


def shipped_files() -> list[Path]:
    files = sorted({p for pattern in SHIPPED for p in HERE.glob(pattern) if p.is_file()})
    return [p for p in files if p.name != "manifest.json"]


def build(out: Path, version: str | None = None) -> dict[str, Path]:
    """Writes `out/<browser>/` and `out/mesoscan-<browser>-<version>.zip`; returns the zips by browser."""
    version = version or project_version()
    out.mkdir(parents=True, exist_ok=True)
    zips = {}
    for browser, manifest in manifests(version).items():
        folder = out / browser
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        for path in shipped_files():
            target = folder / path.relative_to(HERE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        archive = out / f"mesoscan-{browser}-{version}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        zips[browser] = archive
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    for browser, archive in build(args.out).items():
        print(f"{browser}: {archive} ({archive.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
