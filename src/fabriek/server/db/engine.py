"""Engines and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "fabriek_read_only"


def make_engine(url: str) -> Engine:
    """Create an engine tuned for this project's use of the database."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )
        _tune_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    _ping_when_idle(engine, after=PING_AFTER_IDLE_S)
    return engine


PING_AFTER_IDLE_S = 5.0


def _ping_when_idle(engine: Engine, *, after: float) -> None:
    """Check a pooled connection before use only if it sat idle for `after` seconds.

    SQLAlchemy's pool_pre_ping costs a round trip on every checkout, a sixth of a submission's
    statements. A database restart or a dropped connection happens while connections idle, and
    is caught here; a connection that breaks while in steady use fails one request, after
    which the pool replaces its connections.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("the database connection is gone") from exc
        if not alive:
            raise DisconnectionError("the database connection is gone")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock at the start (IMMEDIATE), so two writers queue on
        # busy_timeout instead of one failing at once when both upgrade a read lock. Readers
        # (see reader()) begin plainly and, in WAL mode, never wait for a writer.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def reader(engine: Engine) -> Engine:
    """The same engine and pool, for sessions that only read."""
    return engine.execution_options(**{READ_ONLY: True})


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class WriteLock:
    """SQLite has one writer at a time: writers of every process queue here for it.

    Without it, writers poll SQLite's busy handler, which sleeps up to 100 ms between tries:
    under concurrent submissions that cut throughput several times over. Threads of one process
    queue on a lock; processes (the API workers of one server) on an flock of a file beside the
    database, which the kernel hands to the next waiter at once.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._path = (
            f"{database}-fabriek-writer.lock" if database and database != ":memory:" else None
        )
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._path is not None:
                if self._fd is None or self._pid != os.getpid():
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    self._pid = os.getpid()
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_SQLITE_WRITE_LOCKS: WeakKeyDictionary[Engine, WriteLock] = WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _write_lock(factory: sessionmaker[Session]) -> WriteLock | None:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return None
    with _LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(bind.engine)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[bind.engine] = WriteLock(bind.engine.url.database)
        return lock


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work that writes: commit on success, roll back on any error."""
    lock = _write_lock(factory)
    with lock or nullcontext(), factory() as session, session.begin():
        yield session
