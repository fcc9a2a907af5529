"""The gateway's commands: `keys create|list|revoke`, `db upgrade|current`, `serve` refusing open mode off loopback,
and `serve --dev` (gateway plus in-process worker on SQLite) scanning a shared clip over real HTTP."""

from __future__ import annotations

import json
import time

import pytest
import requests
from click.testing import CliRunner

from server.db import session_scope
from server.keys import hash_key
from server.models import ApiKey
from serving.cli import cli


@pytest.fixture
def sqlite_env(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MESOSCAN_DATABASE_URL", url)
    return url


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_keys_create_list_revoke(sqlite_env):
    created = run("keys", "create", "extension", "--rate-limit", "30/minute")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("msk_") and len(key) > 40
    with session_scope(sqlite_env) as session:
        record = session.query(ApiKey).one()
        assert record.key_hash == hash_key(key) and record.rate_limit == "30/minute"
        assert key not in (record.prefix, record.name)

    listed = json.loads(run("keys", "list", "--json").stdout)
    assert [(k["id"], k["name"], k["prefix"]) for k in listed] == [(record.id, "extension", key[:12])]
    assert key not in run("keys", "list").stdout

    revoked = run("keys", "revoke", str(record.id))
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert json.loads(run("keys", "list", "--json").stdout) == []
    assert json.loads(run("keys", "list", "--all", "--json").stdout)[0]["revoked_at"]


def test_keys_errors_are_clear(sqlite_env):
    bad = CliRunner().invoke(cli, ["keys", "create", "x", "--rate-limit", "lots"])
    assert bad.exit_code != 0 and "not like '120/minute'" in bad.output
    missing = CliRunner().invoke(cli, ["keys", "revoke", "999"])
    assert missing.exit_code != 0 and "no API key with id 999" in missing.output


def test_db_upgrade_and_current(sqlite_env):
    from server.db import head_revision

    assert run("db", "upgrade").exit_code == 0
    assert run("db", "current").stdout.strip() == f"current: {head_revision()}  head: {head_revision()}"


def test_bad_configuration_is_reported(sqlite_env, monkeypatch):
    monkeypatch.setenv("MESOSCAN_VISIBILITY_TIMEOUT_S", "10")
    result = CliRunner().invoke(cli, ["keys", "list"])
    assert result.exit_code != 0 and "MESOSCAN_VISIBILITY_TIMEOUT_S must exceed" in result.output


@pytest.mark.parametrize("args", [["serve", "--dev", "--host", "0.0.0.0"], ["serve", "--host", "192.0.2.1"]])
def test_open_mode_only_on_loopback(sqlite_env, monkeypatch, args):
    monkeypatch.setenv("MESOSCAN_OPEN_MODE", "1")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "only listens on loopback" in result.output


@pytest.mark.slow
def test_dev_mode_scans_a_clip(tmp_path):
    from tests.conftest import VIDEOS_DIR, require_shared
    from tests.support.extension import DevGateway
    from tests.support.media_server import MediaServer

    media = MediaServer(files={"ffpp_004.mp4": require_shared(VIDEOS_DIR) / "ffpp_004.mp4"}).start()
    dev = DevGateway(tmp_path, ["127.0.0.1"], MESOSCAN_FRAMES="8")
    server, base = dev.service, dev.base
    try:
        dev.start()
        ready = requests.get(f"{base}/readyz", timeout=10).json()
        assert ready["status"] == "ready" and "development" in ready["checks"]["broker"]["detail"]
        r = requests.post(f"{base}/api/v1/scans", json={"url": media.url("/files/ffpp_004.mp4")}, timeout=10)
        assert r.status_code == 202, r.text  # no key: open mode
        status_url = r.json()["status_url"]
        deadline = time.monotonic() + 120
        while (scan := requests.get(status_url, timeout=5).json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert scan["status"] == "done", (scan, server.log())
        assert scan["result"]["frames_sampled"] == 8
        page = requests.get(scan["report_url"], timeout=5)
        assert page.status_code == 200 and "<svg" in page.text
    finally:
        server.stop()
        media.stop()
