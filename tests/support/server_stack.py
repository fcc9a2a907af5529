"""The gateway's test stack: a Redis of its own, a PostgreSQL database of its own, real gateway and worker processes.

Registered for every test module by `tests/conftest.py` (`pytest_plugins`; fixtures registered once, so one
stack serves every module of the run). Pieces:

- `RedisServer`: `redis-server` on a free loopback port, in memory only (`--save '' --appendonly no`), so a restart
  loses its data as a crashed production Redis without persistence would; `stop()` / `start()` on the same port.
- `postgres_database()`: `CREATE DATABASE mesoscan_test_<random>` on 127.0.0.1:5432 (user postgres, trust auth),
  dropped at the end; when nothing answers there (a fresh machine), on a private `PostgresServer` started once for
  the run (own data directory, free port, removed at exit).
- `Service`: a subprocess in its own process group (so a test can SIGKILL a worker and all its pool children), with
  its output in a log file shown when it fails.
- fixtures: `pg_url` and `stack_redis` (session), `server_stack` (session: a migrated database of its own, an API
  key, a gunicorn gateway, one worker, a media server over the shared clips), `make_app` (an in-process Flask app
  on `pg_url` and the same Redis, for Flask's test client; settings can be overridden).

Workers scan with the embedded backend and `MESOSCAN_FRAMES=8`; the network allowlist opens the media server's
`127.0.0.1:<port>` only, so its clips can be fetched while every other address (other loopback ports too) stays
blocked: the guard in real workers is exercised.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Fast-moving job settings for tests: heartbeats every half second, lost scans found within a few seconds.
JOB_ENV = {
    "MESOSCAN_FRAMES": "8",
    "MESOSCAN_HEARTBEAT_S": "0.5",
    "MESOSCAN_STALE_AFTER_S": "3",
    "MESOSCAN_RECOVERY_INTERVAL_S": "1",
    "MESOSCAN_RETRY_BACKOFF_S": "0.2",
    "MESOSCAN_RETRY_BACKOFF_MAX_S": "1",
    "MESOSCAN_TASK_SOFT_TIME_LIMIT_S": "120",
    "MESOSCAN_TASK_TIME_LIMIT_S": "150",
    "MESOSCAN_VISIBILITY_TIMEOUT_S": "300",
    "MESOSCAN_GATEWAY_WORKERS": "2",
    "MESOSCAN_RATE_LIMIT": "100000/minute",
    "MESOSCAN_READ_RATE_LIMIT": "1000000/minute",
    "MESOSCAN_AUTH_FAILURE_LIMIT": "1000000/minute",
    "MESOSCAN_METRICS_TOKEN": "test-metrics-token",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONUNBUFFERED": "1",
}


METRICS_TOKEN = "test-metrics-token"
"""`/metrics` of the test gateways wants `Authorization: Bearer METRICS_TOKEN`."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections while the block runs: bound, never listening, so no server
    started meanwhile (a gateway asking for a free port) can be handed the same number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- processes ---------------------------------------------------------------------------------------------------


@dataclass
class Service:
    """A subprocess in its own process group, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess until stop()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive:
            pytest.fail(f"{self.name} exited ({self.process and self.process.returncode}):\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (a worker and its pool processes): a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None):
        self.port = port or free_port()
        self.directory = directory
        self.service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
        ]
        self.service = Service("redis", argv, dict(os.environ), self.directory / "redis.log").start()
        wait_for(self.ping, 10, what=f"redis on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


class PostgresServer:
    """A private PostgreSQL (Debian's binaries) on a free loopback port, in a temporary directory removed by stop();
    started for the tests when none answers on 127.0.0.1:5432 (a fresh machine). Run as the `postgres` user (or
    `nobody`) when the tests run as root, since PostgreSQL refuses to."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mesoscan-pg-"))
        self.port = free_port()
        self.bin = _postgres_bin()

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.directory, user)
            command = ["runuser", "-u", user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        data = self.directory / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off",
            "start",
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    if found := shutil.which("initdb"):
        return Path(found).parent
    raise RuntimeError("PostgreSQL is neither reachable on 127.0.0.1:5432 nor installed (`make system`)")


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_admin_url: str | None = None


def postgres_admin_url() -> str:
    """The machine's PostgreSQL on 127.0.0.1:5432 when it answers, else a private one started for this run."""
    global _admin_url
    if _admin_url is None:
        import psycopg

        try:
            psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
            _admin_url = PG_ADMIN_URL
        except psycopg.OperationalError:
            server = PostgresServer().start()
            atexit.register(server.stop)
            _admin_url = server.admin_url
    return _admin_url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    admin_url = postgres_admin_url()
    name = f"mesoscan_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESOSCAN_") or k in ("MESOSCAN_MODELS_DIR", "MESOSCAN_MODELS_MIRROR")
    }
    env.update(JOB_ENV)
    env.update({"MESOSCAN_DATABASE_URL": database_url, "MESOSCAN_BROKER_URL": broker_url})
    env.update(extra)
    return env


def start_worker(name: str, env: dict[str, str], log_dir: Path, timeout: float = 60) -> Service:
    """`mesoscan worker` as a subprocess; returns once Celery says it is ready (its model loads after that)."""
    argv = [
        sys.executable,
        "-m",
        "server.cli",
        "worker",
        "--hostname",
        f"{name}@test",
        "--loglevel",
        "INFO",
        "--concurrency",
        "1",
    ]
    worker = Service(f"worker {name}", argv, env, log_dir / f"worker-{name}.log").start()
    wait_for(
        lambda: (worker.check_alive(), f"{name}@test ready." in worker.log(100_000))[1],
        timeout,
        interval=0.2,
        what=f"worker {name} to be ready",
    )
    return worker


def start_gateway(env: dict[str, str], log_dir: Path, port: int | None = None) -> tuple[Service, str]:
    port = port or free_port()
    argv = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    gateway = Service("gateway", argv, env, log_dir / "gateway.log").start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        gateway.check_alive()
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 30, interval=0.2, what="the gateway to answer /healthz")
    return gateway, base


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(_models_env) -> Iterator[str]:
    from server.db import upgrade

    with postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def stack_redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@dataclass
class Stack:
    database_url: str
    redis: RedisServer
    env: dict[str, str]
    log_dir: Path
    gateway: Service
    base_url: str
    api_key: str
    media: object
    upload_dir: Path | None = None
    """MESOSCAN_UPLOAD_DIR of the gateway and the workers (uploaded videos wait there for their scan)."""
    workers: list[Service] = field(default_factory=list)

    def session(self) -> requests.Session:
        http = requests.Session()
        http.headers["X-API-Key"] = self.api_key
        return http

    def clip(self, name: str, route: str = "files", query: str = "") -> str:
        return self.media.url(f"/{route}/{name}" + (f"?{query}" if query else ""))  # type: ignore[attr-defined]

    def add_worker(self, name: str, **extra_env: str) -> Service:
        worker = start_worker(name, {**self.env, **extra_env}, self.log_dir)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Service]:
        return [w for w in self.workers if w.alive]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()}" for s in [self.gateway, *self.workers])

    def wait_scan(self, scan_id: str, timeout: float = 120, statuses=("done", "failed")) -> dict:
        http = self.session()

        def finished():
            body = http.get(f"{self.base_url}/api/v1/scans/{scan_id}", timeout=5).json()
            return body if body.get("status") in statuses else None

        try:
            return wait_for(finished, timeout, interval=0.2, what=f"scan {scan_id}")
        except pytest.fail.Exception:
            print(self.logs())
            raise


@pytest.fixture(scope="session")
def server_stack(_models_env, stack_redis, tmp_path_factory) -> Iterator[Stack]:
    """A database of its own (not `pg_url`): its workers must only ever see scans of the loopback clips, never
    the made-up public URLs the in-process API tests leave queued."""
    from server.db import session_scope, upgrade
    from server.keys import create_key
    from tests.conftest import VIDEOS_DIR, require_shared
    from tests.support.media_server import MediaServer

    log_dir = tmp_path_factory.mktemp("stack-logs")
    upload_dir = tmp_path_factory.mktemp("stack-uploads")
    with postgres_database() as database_url:
        upgrade(database_url)
        env = service_env(database_url, stack_redis.url, MESOSCAN_UPLOAD_DIR=str(upload_dir))
        with session_scope(database_url) as session:
            key = create_key(session, "stack tests").key
        clips = {p.name: p for p in sorted(require_shared(VIDEOS_DIR).glob("*.mp4"))}
        media = MediaServer(files=clips).start()
        # The workers may reach the media server and nothing else on this machine (a redirect elsewhere is blocked).
        env["MESOSCAN_NETWORK_ALLOWLIST"] = json.dumps([media.netloc])
        port = free_port()
        env["MESOSCAN_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
        gateway, base = start_gateway(env, log_dir, port)
        stack = Stack(database_url, stack_redis, env, log_dir, gateway, base, key, media, upload_dir)
        try:
            stack.add_worker("w1")
            yield stack
        finally:
            for worker in stack.workers:
                worker.stop()
            stack.gateway.stop()
            media.stop()
            from server.db import get_engine

            get_engine(database_url)[0].dispose()


@pytest.fixture
def make_app(pg_url, stack_redis):
    """make_app(**settings) → an in-process Flask app on the stack's database and Redis (settings override)."""
    from server.app import create_app
    from server.auth import forget_cached_keys
    from server.config import ServerSettings, Settings

    def make(**overrides):
        forget_cached_keys()
        values = {
            "database_url": pg_url,
            "broker_url": stack_redis.url,
            "queue": "mesoscan.api-tests",
            "rate_limit": "1000/minute",
            "read_rate_limit": "100000/minute",
            "auth_failure_limit": "100000/minute",
            "metrics_token": METRICS_TOKEN,
        } | overrides
        app = create_app(Settings.from_environment(server=ServerSettings(**values)))
        app.config["TESTING"] = True
        return app

    yield make
    forget_cached_keys()
