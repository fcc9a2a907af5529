"""docker-compose.yml, the Dockerfile and .env.example agree with each other and with the code's configuration.

Docker cannot run here, so this checks what can be checked statically: every referenced file, port, volume, service
and environment variable exists and matches the settings classes; the TF Serving image is a GPU build not older
than the TensorFlow used to export; healthchecks, restart policies and the GPU reservation are there; no secrets.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES = COMPOSE["services"]
LONG_RUNNING = ("redis", "postgres", "tfserving", "gateway", "worker")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?:[:?\-][^}]*)?\}")


def env_example() -> dict[str, str]:
    """Active and commented-out `NAME=value` lines of .env.example."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if m := re.fullmatch(r"#? ?([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            values[m.group(1)] = m.group(2)
    return values


def setting_names() -> set[str]:
    from scanner.config import ScannerSettings
    from server.config import ServerSettings
    from serving.config import ServingSettings

    return {
        f"MESOSCAN_{name.upper()}"
        for cls in (ServerSettings, ScannerSettings, ServingSettings)
        for name in cls.model_fields
    }


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    return {k: str(v) for k, v in env.items()} if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def command(service: str) -> list[str]:
    cmd = SERVICES[service].get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flags(service: str) -> dict[str, str]:
    return dict(c.removeprefix("--").split("=", 1) for c in command(service) if c.startswith("--") and "=" in c)


def test_the_services_of_the_production_shape():
    assert set(SERVICES) == {"redis", "postgres", "tfserving", "gateway", "worker", "export-models"}
    for name in LONG_RUNNING:
        assert SERVICES[name].get("restart") in ("unless-stopped", "always"), name
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert SERVICES["export-models"]["restart"] == "no"
    assert SERVICES["worker"]["deploy"]["replicas"]
    assert "ports" not in SERVICES["worker"] and "ports" not in SERVICES["tfserving"]  # only the gateway is exposed


def test_every_mesoscan_variable_is_a_real_setting():
    known = setting_names()
    used = set(re.findall(r"\bMESOSCAN_[A-Z0-9_]+", COMPOSE_TEXT)) | {
        k for k in env_example() if k.startswith("MESOSCAN_")
    }
    assert used, "no MESOSCAN_ variables found"
    assert used - known == set(), f"not settings of the code: {sorted(used - known)}"
    required = {
        "MESOSCAN_BROKER_URL",
        "MESOSCAN_DATABASE_URL",
        "MESOSCAN_MODEL_BACKEND",
        "MESOSCAN_TFSERVING_URL",
        "MESOSCAN_ALLOW_PRIVATE_NETWORKS",
    }
    assert required <= set(env_example()), f"undocumented in .env.example: {required - set(env_example())}"


def test_every_interpolated_variable_is_documented_and_no_secret_is_in_the_file():
    documented = env_example()
    for name in INTERPOLATION.findall(COMPOSE_TEXT):
        assert name in documented, f"${{{name}}} is not in .env.example"
    assert re.search(r"POSTGRES_PASSWORD:\s*\$\{POSTGRES_PASSWORD", COMPOSE_TEXT)
    for service in SERVICES.values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key) and not key.startswith("<<"):
                assert str(value).startswith("${"), f"{key} has a literal value in docker-compose.yml"
        assert service.get("env_file") in (None, ".env", [".env"])


def test_example_values_parse_in_the_settings_classes(monkeypatch):
    from scanner.config import ScannerSettings
    from server.config import ServerSettings
    from serving.config import ServingSettings

    for name in [n for n in os.environ if n.startswith("MESOSCAN_")]:
        monkeypatch.delenv(name)
    for name, value in env_example().items():
        monkeypatch.setenv(name, value.replace("PASSWORD", "secret"))
    for name, value in environment("gateway").items():
        monkeypatch.setenv(name, INTERPOLATION.sub("secret", value))
    server, scanner, serving = ServerSettings(), ScannerSettings(), ServingSettings()
    assert server.open_mode is False and scanner.allow_private_networks is False
    assert serving.model_backend == "tfserving-grpc"
    assert server.visibility_timeout_s > server.task_time_limit_s


def test_services_reach_each_other_on_the_right_ports():
    from sqlalchemy.engine import make_url

    env = environment("worker")
    assert env.pop("MESOSCAN_COMPUTE_THREADS") == "1"  # workers: one core per scan process
    assert env == environment("gateway")
    broker = make_url(env["MESOSCAN_BROKER_URL"].replace("redis://", "redis+x://"))
    assert (broker.host, broker.port or 6379) == ("redis", 6379)
    database = make_url(INTERPOLATION.sub("secret", env["MESOSCAN_DATABASE_URL"]))
    pg = environment("postgres")
    assert (database.host, database.port, database.username, database.database) == (
        "postgres",
        5432,
        pg["POSTGRES_USER"],
        pg["POSTGRES_DB"],
    )
    host, port = env["MESOSCAN_TFSERVING_URL"].split(":")
    assert host == "tfserving" and port == flags("tfserving")["port"]
    assert env["MESOSCAN_MODEL_BACKEND"] == "tfserving-grpc"

    gateway = command("gateway")
    assert gateway[:2] == ["mesoscan", "serve"]
    container_port = gateway[gateway.index("--port") + 1]
    assert any(str(p).endswith(f":{container_port}") for p in SERVICES["gateway"]["ports"])
    assert command("worker")[:2] == ["mesoscan", "worker"]
    assert f"127.0.0.1:{container_port}/healthz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])


def test_commands_exist_in_the_code():
    from server import cli
    from serving.cli import cli as mesoscan

    assert {"serve", "worker", "keys", "db"} <= set(mesoscan.list_commands(None))
    assert all(isinstance(getattr(cli, name), click.Command) for name in ("serve", "worker", "keys", "db"))
    serve_options = {o for p in cli.serve.params for o in p.opts}
    assert {"--host", "--port", "--dev"} <= serve_options
    worker_health = " ".join(SERVICES["worker"]["healthcheck"]["test"])
    module = re.search(r"-A (\S+)", worker_health).group(1)
    __import__(module)


def test_tfserving_is_a_gpu_image_not_older_than_the_export_tensorflow():
    from importlib.metadata import version

    image = SERVICES["tfserving"]["image"]
    m = re.fullmatch(r"tensorflow/serving:(\d+\.\d+\.\d+)-gpu", image)
    assert m, f"{image} is not a pinned GPU tag of the official image"
    assert Version(m.group(1)) >= Version(version("tensorflow"))
    devices = SERVICES["tfserving"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)


def test_tfserving_reads_what_the_export_writes(tmp_path):
    f = flags("tfserving")
    assert f["enable_batching"] == "true"
    models_mount = next(v for v in SERVICES["tfserving"]["volumes"] if v.startswith("models:"))
    mount_point = models_mount.split(":")[1]
    assert f["model_config_file"] == f"{mount_point}/models.config"
    assert f["batching_parameters_file"] == f"{mount_point}/batching.config"
    assert models_mount.endswith(":ro")
    export = SERVICES["export-models"]
    assert f"models:{mount_point}" in export["volumes"]
    assert export["environment"]["MODELS_VOLUME"] == mount_point
    assert SERVICES["tfserving"]["depends_on"]["export-models"]["condition"] == "service_completed_successfully"

    script = (ROOT / "server/docker/export-models.sh").read_text()
    assert "mesoscan export --all" in script and "models.config" in script and "batching.config" in script
    copy = next(line for line in script.splitlines() if line.startswith("python -c"))
    target = tmp_path / "batching.config"
    _, flag, code, _ = shlex.split(copy)  # python -c CODE "$out/batching.config"
    subprocess.run([sys.executable, flag, code, str(target)], check=True, cwd=ROOT)
    assert target.read_text() == (ROOT / "serving/batching.config").read_text()
    dockerfile = (ROOT / "server/Dockerfile").read_text()
    assert "export-models.sh /usr/local/bin/mesoscan-export-models" in dockerfile
    assert export["command"] == ["mesoscan-export-models"]


def test_tfserving_healthcheck_asks_for_a_registered_model(settings):
    from serving.registry import list_models

    test = " ".join(SERVICES["tfserving"]["healthcheck"]["test"])
    model = re.search(r"/v1/models/(\w+)", test).group(1)
    assert model in {spec.name for spec in list_models(settings)}
    assert "/dev/tcp/127.0.0.1/" + flags("tfserving")["rest_api_port"] in test


def test_volumes_and_dependencies_are_declared():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name}: volume {source} is not declared"
        depends = service.get("depends_on") or {}
        for other, spec in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert other in SERVICES, f"{name} depends on unknown {other}"
            if spec.get("condition") == "service_healthy":
                assert SERVICES[other].get("healthcheck"), f"{other} has no healthcheck to wait for"


def test_dockerfile_copies_what_exists_and_installs_ffmpeg():
    dockerfile = (ROOT / "server/Dockerfile").read_text()
    assert SERVICES["gateway"]["build"]["dockerfile"] == "server/Dockerfile"
    assert re.search(r"apt-get install[^\n]*ffmpeg", dockerfile)
    assert re.search(r"^USER (?!root)", dockerfile, re.M)
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _dest = line.split()
        for source in sources:
            if source == "README.md":
                continue  # written by the project's documentation; pyproject names it
            assert (ROOT / source).exists(), f"COPY {source}: missing"
    ignore = (ROOT / "server/Dockerfile.dockerignore").read_text()
    for source in ("serving/", "scanner/", "server/", "pyproject.toml", "constraints.txt"):
        assert f"!{source}" in ignore


@pytest.mark.parametrize("service", ["gateway", "worker", "export-models"])
def test_app_services_use_the_built_image_and_env_file(service):
    assert SERVICES[service]["build"]["context"] == "."
    assert SERVICES[service]["env_file"] == ".env"
    assert SERVICES[service]["image"] == SERVICES["gateway"]["image"]


def test_no_two_settings_share_an_environment_variable():
    """The three settings classes read one namespace (MESOSCAN_*): a shared name would set both at once."""
    from collections import Counter

    from scanner.config import ScannerSettings
    from server.config import ServerSettings
    from serving.config import ServingSettings

    names = Counter(f for cls in (ServerSettings, ScannerSettings, ServingSettings) for f in cls.model_fields)
    assert [name for name, count in names.items() if count > 1] == []
