"""The `MESOSCAN_*` environment: an unknown name or a bad value stops every entry point with one line naming the
variable (status 2); settings are built once where a process starts and passed down, the Celery app included."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serving.config import DEVELOPMENT_NAMES, SettingsError, check_environment, known_names, load
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
MESOSCAN = str(BIN / "mesoscan")

TYPO = {"MESOSCAN_FRAMEZ": "8"}
BAD_VALUE = {"MESOSCAN_FRAMES": "0"}


def run(argv: list[str], bad: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **bad, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_clear_line(result: subprocess.CompletedProcess, *wanted: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in wanted:
        assert text in lines[0], lines[0]


def test_a_misspelt_variable_stops_a_scan_with_a_suggestion():
    result = run([MESOSCAN, "scan", "x"], TYPO)
    assert_one_clear_line(result, "MESOSCAN_FRAMEZ", "did you mean MESOSCAN_FRAMES?")


def test_a_bad_value_stops_a_scan_naming_the_variable_and_the_bound():
    result = run([MESOSCAN, "scan", "x"], BAD_VALUE)
    assert_one_clear_line(result, "MESOSCAN_FRAMES", "greater than or equal to 1")


@pytest.mark.parametrize(
    ("argv", "bad", "wanted"),
    [
        (["serve"], TYPO, "did you mean MESOSCAN_FRAMES?"),
        (["serve", "--dev"], {"MESOSCAN_MODEL_BACKEND": "grpc"}, "'embedded', 'tfserving-grpc' or 'tfserving-rest'"),
        (["worker"], BAD_VALUE, "MESOSCAN_FRAMES"),
        (["worker"], {"MESOSCAN_WORKER_CONCURENCY": "2"}, "did you mean MESOSCAN_WORKER_CONCURRENCY?"),
        (["keys", "list"], {"MESOSCAN_HEARTBEAT_S": "40"}, "MESOSCAN_STALE_AFTER_S must be more than twice"),
        (["serve"], {"MESOSCAN_CORS_ORIGINS": "not json"}, "MESOSCAN_CORS_ORIGINS: expected a JSON list"),
    ],
)
def test_the_gateway_and_worker_commands_stop_the_same_way(argv, bad, wanted):
    assert_one_clear_line(run([MESOSCAN, *argv], bad), wanted)


def test_celerys_own_command_line_stops_the_same_way():
    """`celery -A server.worker_app ...` (the worker container's health check) builds the settings itself."""
    result = run([str(BIN / "celery"), "-A", "server.worker_app", "inspect", "ping", "--timeout", "1"], TYPO)
    assert_one_clear_line(result, "MESOSCAN_FRAMEZ", "did you mean MESOSCAN_FRAMES?")


def test_create_app_reads_and_checks_the_environment_when_given_no_settings(monkeypatch, tmp_path):
    from server.app import create_app

    monkeypatch.setenv("MESOSCAN_DATABASE_URL", f"sqlite:///{tmp_path / 'scans.db'}")
    monkeypatch.setenv("MESOSCAN_RATE_LIMITT", "5/minute")
    with pytest.raises(SettingsError) as info:
        create_app()
    assert str(info.value) == "unknown setting MESOSCAN_RATE_LIMITT (did you mean MESOSCAN_RATE_LIMIT?)"
    monkeypatch.delenv("MESOSCAN_RATE_LIMITT")
    monkeypatch.setenv("MESOSCAN_MAX_DURATION_S", "-1")
    with pytest.raises(SettingsError, match="MESOSCAN_MAX_DURATION_S"):
        create_app()
    monkeypatch.setenv("MESOSCAN_MAX_DURATION_S", "90")
    app = create_app()
    assert app.config["MESOSCAN_SCANNER"].max_duration_s == 90
    assert app.extensions["celery"].settings.scanner is app.config["MESOSCAN_SCANNER"]


def test_the_messages(monkeypatch):
    known = known_names()
    with pytest.raises(SettingsError) as info:
        check_environment(
            {"MESOSCAN_FRAMEZ": "8", "MESOSCAN_NOTHING_LIKE_IT": "1", "HOME": "/root", "mesoscan_frames": "8"}
        )
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "unknown setting MESOSCAN_FRAMEZ (did you mean MESOSCAN_FRAMES?); "
        "unknown setting MESOSCAN_NOTHING_LIKE_IT (the settings are listed in docs/configuration.md)"
    ), "mesoscan_frames is MESOSCAN_FRAMES: pydantic-settings reads names in any case"
    check_environment({name: "1" for name in known})  # every known name passes, whatever its value
    from scanner.config import ScannerSettings

    assert load(ScannerSettings, frames=7).frames == 7

    monkeypatch.setenv("MESOSCAN_DETECTOR", "wide")
    with pytest.raises(SettingsError) as info:
        load(ScannerSettings)
    assert str(info.value) == "bad setting MESOSCAN_DETECTOR='wide': input should be 'full' or 'short'"


def test_every_variable_the_suite_and_the_deployment_set_is_known():
    """The tests, CI and compose set MESOSCAN_* variables of their own: a name unknown to the check would stop
    every command they run. (.env.example and its generator hold placeholders such as MESOSCAN_X; tests/test_docs.py
    checks that file.)"""
    known = known_names()
    used: set[str] = set()
    paths = [*(ROOT / "tests").rglob("*.py"), ROOT / ".ci" / "run", ROOT / "Makefile", ROOT / "docker-compose.yml"]
    paths.append(ROOT / "server" / "Dockerfile")
    for path in paths:
        if path.is_file() and path.name not in ("test_settings.py", "settings_docs.py"):
            used |= set(re.findall(r"\bMESOSCAN_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    assert used - known == set()
    assert set(DEVELOPMENT_NAMES) <= used, "a development name nothing uses any more: drop it"


def test_each_celery_app_is_configured_for_its_own_settings(stack_redis):
    """Two apps in one process publish to their own brokers: nothing is shared, nothing is reset."""
    import redis

    from server.config import ServerSettings, Settings
    from server.tasks import ScanApp

    base = stack_redis.url.rsplit("/", 1)[0]
    apps = {
        db: ScanApp(Settings.from_environment(server=ServerSettings(broker_url=f"{base}/{db}", queue="settings.q")))
        for db in (8, 9)
    }
    clients = {db: redis.Redis.from_url(f"{base}/{db}") for db in apps}
    for client in clients.values():
        client.delete("settings.q")
    apps[8].publish("a", "task-a")
    apps[9].publish("b", "task-b")
    apps[9].publish("c", "task-c")
    assert {db: client.llen("settings.q") for db, client in clients.items()} == {8: 1, 9: 2}
    for client in clients.values():
        client.delete("settings.q")
