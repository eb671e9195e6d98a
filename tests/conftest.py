"""Shared fixtures: real databases (SQLite and PostgreSQL), a real server on loopback, test data helpers."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fabriek.server.db.engine import make_engine, make_session_factory
from fabriek.server.db.migrate import upgrade
from tests.helpers import ServerProcess, start_server

PG_ADMIN_DSN = os.environ.get("FABRIEK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background (`make test &` in a script without job control) inherits
    # SIGINT ignored, and so would every command it starts: the tests of Ctrl-C would then wait
    # for an interruption that never comes. A handler (not SIG_IGN) is reset to the default in
    # the commands the tests run.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin DSN of the PostgreSQL server; in CI (FABRIEK_REQUIRE_POSTGRES=1) its absence fails."""
    if not _pg_available():
        if os.environ.get("FABRIEK_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required but does not answer at {PG_ADMIN_DSN}")
        pytest.skip(f"PostgreSQL does not answer at {PG_ADMIN_DSN}")
    return PG_ADMIN_DSN


def create_pg_database(admin_dsn: str) -> tuple[str, str]:
    name = f"fabriek_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def drop_pg_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name, url = create_pg_database(pg_server)
    yield url
    drop_pg_database(pg_server, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fabriek.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `fabriek up` on loopback, on SQLite, with 2 CPUs, 4G and 2 fake GPUs declared."""
    proc = start_server(tmp_path_factory.mktemp("server") / "home")
    yield proc
    proc.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that points a `fabriek up` at a fresh database: SQLite in its home, or a
    throwaway PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        yield {}
        return
    admin = request.getfixturevalue("pg_server")
    name, url = create_pg_database(admin)
    yield {"FABRIEK_DATABASE_URL": url}
    drop_pg_database(admin, name)
