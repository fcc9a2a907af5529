"""Database connections: one SQLAlchemy engine per process and URL, made after any fork, plus migrations."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[tuple[int, str], tuple[Engine, sessionmaker[Session]]] = {}
_readers: dict[tuple[int, str], sessionmaker[Session]] = {}


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3; SQLite files get their directory created."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800, connect_args={"connect_timeout": 5}
    )


def get_engine(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """This process's engine for `url` (a forked child gets its own, never its parent's connections)."""
    key = (os.getpid(), url)
    with _lock:
        if key not in _engines:
            engine = make_engine(url)
            _engines[key] = (engine, sessionmaker(engine, expire_on_commit=False))
        return _engines[key]


def forget_parent_engines() -> None:
    """After fork: drop the parent's pools without closing its sockets (they belong to the parent)."""
    with _lock:
        for (pid, _url), (engine, _maker) in list(_engines.items()):
            if pid != os.getpid():
                engine.dispose(close=False)
                del _engines[(pid, _url)]
                _readers.pop((pid, _url), None)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    _engine, maker = get_engine(url)
    session = maker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session for reads only, in autocommit mode: no BEGIN/COMMIT round trips (each SELECT sees committed data)."""
    engine, _ = get_engine(url)
    key = (os.getpid(), url)
    with _lock:
        if key not in _readers:
            _readers[key] = sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        maker = _readers[key]
    session = maker()
    try:
        yield session
    finally:
        session.close()


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("server").joinpath("migrations")))
    config.attributes["database_url"] = normalize_url(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (the gateway and the workers do this on start; concurrent starts are safe)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine, _ = get_engine(url)
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
