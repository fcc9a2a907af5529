"""`mesoscan serve`, `mesoscan worker`, `mesoscan keys` and `mesoscan db`: the gateway side's commands."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile

import click
from gunicorn.app.base import BaseApplication

from server.config import ServerSettings, Settings
from serving.cli import BadSettings, command_settings


def _settings() -> Settings:
    """All a gateway or worker reads, built once here and passed down; an unknown or bad `MESOSCAN_*` variable
    ends the command with one line (status 2)."""
    from serving.config import SettingsError

    try:
        return Settings.from_environment()
    except SettingsError as exc:
        raise BadSettings(str(exc)) from None


def _server_settings() -> ServerSettings:
    return command_settings(ServerSettings)


def _migrate(settings: ServerSettings) -> None:
    from server.db import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        raise click.ClickException(f"cannot prepare the database: {type(exc).__name__}: {exc}") from None


class _Gunicorn(BaseApplication):
    """gunicorn run from Python, loading the app factory in each worker process (after the fork)."""

    def __init__(self, options: dict, settings: Settings):
        self.options, self.settings = options, settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from server.app import create_app

        return create_app(self.settings)


def _child_exit(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 in containers).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="gunicorn processes (default MESOSCAN_GATEWAY_WORKERS)."
)
@click.option("--access-log/--no-access-log", default=False, help="Log every request (gunicorn's access log).")
@click.option(
    "--dev",
    is_flag=True,
    help="All in one process for local use: gateway plus an in-process worker, no API keys, "
    "in-memory queue, loopback only.",
)
def serve(host: str, port: int, workers: int | None, access_log: bool, dev: bool) -> None:
    """Run the REST gateway (gunicorn), or everything in one process with --dev."""
    from server.dev import dev_settings, is_loopback

    root = _settings()
    settings = root.server
    if (dev or settings.open_mode) and not is_loopback(host):
        raise click.ClickException("open mode (no API keys) only listens on loopback: use --host 127.0.0.1")
    if dev:
        settings = dev_settings(settings)
        root = dataclasses.replace(root, server=settings)
    _migrate(settings)
    if dev:
        from werkzeug.serving import run_simple

        from server.app import create_app
        from server.dev import start_worker

        app = create_app(root)
        start_worker(app.extensions["celery"])
        click.echo(
            f"MesoScan development server on http://{host}:{port} (open mode, in-process worker, "
            f"database {settings.database_url})",
            err=True,
        )
        run_simple(host, port, app, threaded=True, use_reloader=False)
        return
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # gunicorn's processes share request metrics through it
        metrics_dir = tempfile.mkdtemp(prefix="mesoscan-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _Gunicorn(
        {
            "bind": bind,
            "workers": workers or settings.gateway_workers,
            "threads": settings.gateway_threads,
            "worker_class": "gthread",
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "loglevel": "info",
            "child_exit": _child_exit,
            "proc_name": "mesoscan-gateway",
            "forwarded_allow_ips": "*" if settings.proxy_hops else "127.0.0.1",
        },
        root,
    ).run()


@click.command()
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 64),
    default=None,
    help="Scans at once (processes; default MESOSCAN_WORKER_CONCURRENCY). Each loads its own model.",
)
@click.option("--hostname", "-n", default=None, help="Worker node name (default: celery's, e.g. celery@host).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(1),
    default=None,
    help="Replace a worker process after this many scans.",
)
def worker(
    concurrency: int | None, hostname: str | None, loglevel: str, pool: str, max_tasks_per_child: int | None
) -> None:
    """Run a scan worker (Celery): takes scans from the queue, one per process at a time."""
    from server.tasks import ScanApp

    root = _settings()
    settings = root.server
    _migrate(settings)
    app = ScanApp(root)
    app.set_default()  # the pool's threads (solo, threads) run tasks in the process's default app
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool}",
        "--queues",
        settings.queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    app.worker_main(argv)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (stored hashed; a key is shown once)."""


@keys.command("create")
@click.argument("name")
@click.option("--rate-limit", default=None, help="This key's submission limit, e.g. 120/minute.")
def keys_create(name: str, rate_limit: str | None) -> None:
    """Make a key named NAME and print it (it cannot be shown again)."""
    from server.db import session_scope
    from server.keys import ApiKeyError, create_key

    settings = _server_settings()
    _migrate(settings)
    try:
        with session_scope(settings.database_url) as session:
            new = create_key(session, name, rate_limit)
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created key {new.id} ({new.name}); store it now, it is not shown again:", err=True)
    click.echo(new.key)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True)
def keys_list(include_revoked: bool, as_json: bool) -> None:
    """The keys (never their secrets)."""
    from server.db import session_scope
    from server.keys import list_keys

    settings = _server_settings()
    _migrate(settings)
    with session_scope(settings.database_url) as session:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "rate_limit": k.rate_limit,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in list_keys(session, include_revoked)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no API keys (make one with `mesoscan keys create NAME`)", err=True)
        return
    click.echo(f"{'ID':>4}  {'NAME':<24} {'PREFIX':<14} {'RATE LIMIT':<14} {'CREATED':<20} REVOKED")
    for r in rows:
        click.echo(
            f"{r['id']:>4}  {r['name'][:24]:<24} {r['prefix'] + '…':<14} {r['rate_limit'] or 'default':<14} "
            f"{r['created_at'][:19]:<20} {(r['revoked_at'] or '')[:19]}"
        )


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke key KEY_ID (gateways stop accepting it within 10 seconds)."""
    from server.db import session_scope
    from server.keys import ApiKeyError, revoke_key

    settings = _server_settings()
    _migrate(settings)
    try:
        with session_scope(settings.database_url) as session:
            record = revoke_key(session, key_id)
            name = record.name
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked key {key_id} ({name})")


@click.group()
def db() -> None:
    """The scan database's schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database to REVISION (the gateway and the workers also do this on start)."""
    from server.db import upgrade

    settings = _server_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db.command("current")
def db_current() -> None:
    """Print the database's schema revision and the newest one."""
    from server.db import current_revision, head_revision

    settings = _server_settings()
    click.echo(f"current: {current_revision(settings.database_url)}  head: {head_revision()}")


if __name__ == "__main__":  # `python -m server.cli serve ...` is `mesoscan serve ...`
    from serving.cli import main

    main()
