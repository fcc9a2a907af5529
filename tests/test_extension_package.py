"""`make extension`'s packages: both browsers' zips versioned like the Python package, holding only what ships;
manifests that ask for no host permission; the Firefox package passes `web-ext lint` (from npm) with no error."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import ROOT

EXTENSION = ROOT / "extension"
WEB_EXT = EXTENSION / "node_modules" / ".bin" / "web-ext"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def packager():
    spec = importlib.util.spec_from_file_location("extension_package", EXTENSION / "package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(
        [sys.executable, str(EXTENSION / "package.py"), "--out", str(out)], capture_output=True, text=True, check=True
    )
    assert "chrome:" in run.stdout and "firefox:" in run.stdout
    return out


def test_both_packages_are_versioned_and_hold_only_what_ships(built):
    shipped = {p.relative_to(EXTENSION).as_posix() for p in packager().shipped_files()} | {"manifest.json"}
    assert {"src/background.js", "popup.html", "_locales/fr/messages.json", "icons/icon128.png"} <= shipped
    for browser in ("chrome", "firefox"):
        archive = built / f"mesoscan-{browser}-{VERSION}.zip"
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            manifest = json.loads(zf.read("manifest.json"))
        assert names == shipped
        assert not any(n.startswith(("test/", "node_modules/")) or n in ("package.json", "package.py") for n in names)
        assert manifest["version"] == VERSION
    source = json.loads((EXTENSION / "manifest.json").read_text())
    assert source["version"] == VERSION, "extension/manifest.json must carry pyproject.toml's version"


def test_the_packages_are_reproducible(built, tmp_path):
    again = packager().build(tmp_path)
    for browser, archive in again.items():
        assert archive.read_bytes() == (built / archive.name).read_bytes(), browser


def test_manifests_ask_for_no_host_permission(built):
    for browser in ("chrome", "firefox"):
        manifest = json.loads((built / browser / "manifest.json").read_text())
        text = json.dumps(manifest)
        assert "host_permissions" not in manifest and "content_scripts" not in manifest
        assert "<all_urls>" not in text and '"tabs"' not in text
        assert set(manifest["permissions"]) <= {
            "activeTab",
            "scripting",
            "storage",
            "contextMenus",
            "alarms",
            "sidePanel",
        }
        assert manifest["optional_host_permissions"]  # asked for at Save, for the gateway's origin only
        assert "'unsafe" not in manifest["content_security_policy"]["extension_pages"]
    chrome = json.loads((built / "chrome" / "manifest.json").read_text())
    firefox = json.loads((built / "firefox" / "manifest.json").read_text())
    assert chrome["side_panel"]["default_path"] == "sidepanel.html" and "sidePanel" in chrome["permissions"]
    assert "browser_specific_settings" not in chrome and "sidebar_action" not in chrome
    assert firefox["browser_specific_settings"]["gecko"]["id"]
    assert firefox["background"]["scripts"] == [firefox["background"]["service_worker"]]
    assert firefox["sidebar_action"]["default_panel"] == "sidepanel.html"
    assert "side_panel" not in firefox and "sidePanel" not in firefox["permissions"]


def test_firefox_package_passes_web_ext_lint(built):
    assert WEB_EXT.exists(), "web-ext is missing: make setup runs npm ci in extension/"
    run = subprocess.run(
        [str(WEB_EXT), "lint", "--source-dir", str(built / "firefox"), "--output", "json", "--no-config-discovery"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=EXTENSION,
    )
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["summary"]["errors"] == 0, json.dumps(report["errors"], indent=1)
    # the warnings left are known and harmless: Firefox ignores `service_worker` beside `scripts`, and the side
    # panel's API, called only where it exists
    assert {w["code"] for w in report["warnings"]} <= {"BACKGROUND_SERVICE_WORKER_IGNORED", "UNSUPPORTED_API"}
    assert all("sidePanel" in w["message"] for w in report["warnings"] if w["code"] == "UNSUPPORTED_API")


def test_odd_versions_still_make_a_browser_version():
    assert packager().manifest_version("0.2.0rc1") == ("0.2.0", "0.2.0rc1")
    assert packager().manifest_version("1.4") == ("1.4", "1.4")
    with pytest.raises(ValueError, match="does not start with a number"):
        packager().manifest_version("dev")
