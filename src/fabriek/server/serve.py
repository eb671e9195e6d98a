"""`fabriek up`: API, controller and local backend in one process, on SQLite unless told otherwise."""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import uvicorn

from fabriek.core.errors import Conflict
from fabriek.server.app import create_app
from fabriek.server.db.migrate import upgrade
from fabriek.server.runtime import Runtime, build_runtime
from fabriek.server.services.auth import bootstrap
from fabriek.settings import Settings

log = logging.getLogger("fabriek")


def lock_home(home: Path) -> IO[str]:
    """Hold HOME/server.lock for the server's life: two servers on one home would launch jobs twice."""
    home.mkdir(parents=True, exist_ok=True)
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


def prepare(settings: Settings) -> tuple[Runtime, str | None]:
    """Migrate the database and, on first start, create the administrator. Returns its new token."""
    runtime = build_runtime(settings)
    upgrade(runtime.engine)
    with runtime.transaction() as session:
        token = bootstrap(session, admin_name=_admin_name(), now=runtime.clock())
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
    lock = lock_home(settings.home)
    runtime, token = prepare(settings)
    try:
        on_ready(runtime, token)
        runtime.backend.launcher.warm()  # so that the first job starts as fast as the rest
        runtime.controller.start()
        runtime.controller.wake()
        config = uvicorn.Config(
            create_app(runtime),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        uvicorn.Server(config).run()
    finally:
        runtime.close()
        lock.close()
