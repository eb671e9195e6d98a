"""`fabriek up`: API, controller and local backend, on SQLite unless told otherwise.

With one API process, one process runs the API, the controller and the local backend; with more,
API worker processes serve the API and the main process runs the controller and the backend (see
fabriek.server.workers)."""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import uvicorn
from sqlalchemy import Connection, Engine, text

from fabriek.core.errors import Conflict, IsolationUnavailable
from fabriek.server.db.migrate import upgrade
from fabriek.server.runtime import Runtime, build_runtime, detect_machine
from fabriek.server.services.auth import bootstrap
from fabriek.server.services.identities import ensure_identities
from fabriek.server.workers import WakeListener, WorkerPool, bind, uvicorn_config
from fabriek.settings import Settings

log = logging.getLogger("fabriek")


def lock_home(home: Path) -> IO[str]:
    """Hold HOME/server.lock for the server's life: two servers on one home would launch jobs twice."""
    # Only the server's user may look inside: tokens' hashes, job specs and outputs live here.
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = open(home / "server.lock", "a+")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Conflict(f"another fabriek server is already running on {home}") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# Any fixed number: the key of the PostgreSQL advisory lock that one controller holds per database.
CONTROLLER_LOCK_KEY = 0x66616272  # "fabr"


def lock_database(engine: Engine) -> Connection | None:
    """On PostgreSQL, hold a session advisory lock while the server runs: two servers on one
    database (from two homes or two machines) would each launch every job."""
    if engine.dialect.name != "postgresql":
        return None  # SQLite lives in the home, which lock_home already guards
    conn = engine.connect()
    got = conn.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": CONTROLLER_LOCK_KEY}
    ).scalar()
    conn.commit()
    if not got:
        conn.close()
        raise Conflict("another fabriek server is already running against this database")
    return conn


def prepare(settings: Settings) -> tuple[Runtime, str | None]:
    """Migrate the database and, on first start, create the administrator. Returns its new token."""
    runtime = build_runtime(settings, machine=detect_machine(settings))
    isolation = runtime.backend.isolation  # found once, here (it tries bubblewrap)
    if settings.require_isolation and not isolation.complete:
        runtime.close()
        raise IsolationUnavailable(
            "FABRIEK_REQUIRE_ISOLATION is set, but jobs would not be fully isolated: "
            + "; ".join(isolation.problems or ("the server is not root",))
        )
    if settings.sandbox and isolation.as_root and isolation.bwrap is None:
        # Fail closed: as root, an unsandboxed job would run as root. Only an operator's
        # explicit FABRIEK_SANDBOX=0 runs jobs so (and `fabriek up` warns).
        runtime.close()
        raise IsolationUnavailable(
            "the server runs as root and cannot sandbox jobs, which would then run as root: "
            + "; ".join(isolation.problems)
            + ". Install bubblewrap, or run the server as an ordinary user "
            "(FABRIEK_SANDBOX=0 runs jobs unsandboxed, as the server's user)"
        )
    upgrade(runtime.engine)
    with runtime.transaction() as session:
        token = bootstrap(session, admin_name=_admin_name(), now=runtime.clock())
        given = ensure_identities(session, runtime.uids)
    if given:
        log.info("gave %d project(s) without one a uid", given)
    return runtime, token


def _admin_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


def serve(settings: Settings, *, on_ready: Callable[[Runtime, str | None], None]) -> None:
    """Run until interrupted. Jobs keep running when the server stops; the next start adopts them."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with ExitStack() as cleanup:  # undone in reverse order, whatever fails on the way
        cleanup.callback(lock_home(settings.home).close)
        # Before anything is written: a first start that fails here must not create the
        # administrator's token without showing it.
        sockets = bind(settings.host, settings.port, settings.api_processes)
        cleanup.callback(_close_all, sockets)
        runtime, token = prepare(settings)
        cleanup.callback(runtime.close)
        db_lock = lock_database(runtime.engine)
        if db_lock is not None:
            cleanup.callback(db_lock.close)
        on_ready(runtime, token)
        runtime.backend.launcher.warm()  # so that the first job starts as fast as the rest
        runtime.controller.start()
        runtime.controller.wake()
        if len(sockets) == 1:
            uvicorn.Server(uvicorn_config(runtime)).run(sockets=sockets)
            return
        # The API in worker processes; this one keeps the controller and the backend, so that
        # neither waits for the GIL behind requests.
        listener = WakeListener(runtime.controller.wake)
        listener.start()
        cleanup.callback(listener.stop)
        machine = (runtime.backend.resources, runtime.backend.gpus)
        pool = WorkerPool(
            settings=settings,
            sockets=sockets,
            wake=listener.theirs,
            machine=machine,
            auth_epoch=runtime.tokens.epoch,
        )
        cleanup.callback(pool.stop)
        pool.start()
        log.info("serving the API from %d worker processes %s", len(sockets), pool.pids)
        _wait_for_stop_signal()


def _wait_for_stop_signal() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
