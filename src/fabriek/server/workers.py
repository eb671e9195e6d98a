"""API worker processes: the API on more than one core, with one controller.

Python runs one thread at a time per process, so one process serves a few hundred requests a
second at most. With `workers` above 1, `fabriek up` serves the API port from that many worker
processes, started with `spawn` so that none inherits the main process's threads, while the main
process runs the controller and the local backend. Each worker has its own SO_REUSEPORT socket,
created by the main process (which keeps them, so a restarted worker gets its socket and the
connections waiting on it back); the kernel spreads new connections over them.

A worker only answers requests. Where a request must wake the controller (a submission, a cancel),
the worker sends one byte over a datagram socket to the main process, which wakes it. On SQLite,
the writers of all processes queue on one file lock (see fabriek.server.db.engine.WriteLock).

Workers die with the main process (PR_SET_PDEATHSIG), and the main process starts a new one when
one dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from fabriek.backends.local.gpus import GpuInfo
from fabriek.core.errors import Conflict
from fabriek.core.jobs import Resources
from fabriek.settings import Settings

if TYPE_CHECKING:
    from fabriek.server.services.auth import AuthEpoch

log = logging.getLogger("fabriek.workers")

_SUBMISSION, _OTHER, _QUIT = b"s", b"w", b"q"
MAX_CONNECTIONS = 1024  # per API process
_PR_SET_PDEATHSIG = 1


def bind(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """One listening socket per API process, all on host:port.

    With more than one they are SO_REUSEPORT sockets, so that the kernel spreads new connections
    evenly over the processes. On one shared socket the first process to wake would accept a
    whole burst of connections, and keep-alive clients would then load it alone.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # A plain socket first: it fails if anyone holds the port, also another server that
        # would otherwise join our SO_REUSEPORT group and take half of our connections.
        probe = socket.create_server((host, port), family=family, backlog=2048)
        if count == 1:
            return [probe]
        probe.close()
        return [
            socket.create_server((host, port), family=family, backlog=2048, reuse_port=True)
            for _ in range(count)
        ]
    except OSError as exc:
        raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class RemoteWaker:
    """Wakes the controller of the main process from an API worker.

    A Unix datagram socket queues only a few messages (net.unix.max_dgram_qlen, 10 by default).
    When the queue is full a submission's wake-up is dropped, which loses nothing: the listener
    has yet to read the queued ones, so the controller's pass after them starts after this
    submission committed, and sees it. Other wake-ups (a cancel) wait up to 0.1 s for room,
    because a pass woken only by submissions does not forward cancels.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)

    def __call__(self, submission: bool) -> None:
        message = _SUBMISSION if submission else _OTHER
        try:
            self._sock.send(message)
        except BlockingIOError:
            if not submission:
                self._send_waiting(message)
        except OSError:
            log.warning("cannot reach the controller; it will see this change on its next pass")

    def _send_waiting(self, message: bytes) -> None:
        _readable, writable = select.select([], [self._sock], [], 0.1)
        if writable:
            try:
                self._sock.send(message)
            except OSError:
                pass  # the controller's next timed pass (every second) sees it anyway


class WakeListener:
    """In the main process: turns the workers' messages into wake-ups (Controller.wake)."""

    def __init__(self, wake: Callable[..., None]) -> None:
        self.wake = wake
        self._ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._run, name="wake-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                message = self._ours.recv(64)
            except OSError:
                return
            if message == _QUIT:
                return
            self.wake(submission=message == _SUBMISSION)

    def stop(self) -> None:
        try:
            self.theirs.send(_QUIT)
        except OSError:
            pass
        self._thread.join(5)
        self._ours.close()
        self.theirs.close()


class WorkerPool:
    """One API worker process per socket, restarted when it dies."""

    RESTART_BACKOFF_MAX = 30.0

    def __init__(
        self,
        *,
        settings: Settings,
        sockets: list[socket.socket],
        wake: socket.socket,
        machine: tuple[Resources, list[GpuInfo]],
        auth_epoch: AuthEpoch,
    ) -> None:
        self._sockets = sockets
        self._args = (
            settings.model_dump(mode="json"),
            wake,
            machine,
            os.getpid(),
            auth_epoch.shared,
        )
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="api-workers", daemon=True)

    def start(self) -> None:
        self._procs = [self._spawn(sock) for sock in self._sockets]
        self._monitor.start()

    def _spawn(self, sock: socket.socket) -> BaseProcess:
        proc = self._context.Process(
            target=worker_main, args=(sock, *self._args), name="fabriek-api-worker", daemon=False
        )
        proc.start()
        return proc

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc.is_alive() or self._stopping.is_set():
                    continue
                log.error("API worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, self.RESTART_BACKOFF_MAX)
                self._procs[i] = self._spawn(self._sockets[i])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM: each worker finishes the requests it has (uvicorn's graceful shutdown)."""
        self._stopping.set()
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def worker_main(
    listen: socket.socket,
    settings_data: dict[str, Any],
    wake: socket.socket,
    machine: tuple[Resources, list[GpuInfo]],
    parent: int,
    auth_epoch: Any,
) -> None:
    """The body of one API worker process. `auth_epoch`: the shared memory of the main
    process's AuthEpoch, so that a change of roles or tokens made through one worker voids
    what every worker remembered."""
    # Out of the terminal's process group: Ctrl-C stops the main process, which stops us in
    # order; a worker that quit on its own would be restarted.
    os.setpgrp()
    _die_with_parent(parent)
    import uvicorn

    from fabriek.server.runtime import build_runtime
    from fabriek.server.services.auth import AuthEpoch

    settings = Settings(**settings_data)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = build_runtime(settings, machine=machine, auth_epoch=AuthEpoch(auth_epoch))
    runtime.waker = RemoteWaker(wake)
    try:
        uvicorn.Server(uvicorn_config(runtime)).run(sockets=[listen])
    finally:
        runtime.close()


def uvicorn_config(runtime: Any) -> Any:
    import uvicorn

    from fabriek.server.app import create_app

    return uvicorn.Config(
        create_app(runtime),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        # The peer is the client: X-Forwarded-For from 127.0.0.1 (uvicorn's default trust) let any
        # local process write the client address that refusals are audited and rate-limited by.
        proxy_headers=False,
        # Each open request may hold a body of up to max_request_bytes before it is routed; past
        # this many connections a process answers 503 at once instead of holding more.
        limit_concurrency=MAX_CONNECTIONS,
    )
