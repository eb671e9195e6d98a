"""Helpers for tests: a real server process, polling with a deadline, and `make_*` builders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from fabriek.backends.base import read_job_file

T = TypeVar("T")
FABRIEK = str(Path(sys.executable).with_name("fabriek"))


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 20, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return str(json.loads(Path(self.env["FABRIEK_CONFIG"]).read_text())["token"])

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [FABRIEK, "up", "--port", str(self.port)], env=self.env, stdout=log, stderr=log
            )
        wait_for(self._healthy, timeout=30, what=f"the server on {self.url} (log {self.log})")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the server exited with {self.proc.returncode}: {self.log.read_text()}"
            )
        try:
            return httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        # Its API workers follow it (PR_SET_PDEATHSIG), a moment later: until they have, they
        # still answer on the port, and a restarted server would look healthy too soon.
        wait_for(self._port_closed, timeout=20, what=f"the killed server's port {self.port}")

    def _port_closed(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) != 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        kill_jobs(self.home)

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )

    def cli(
        self, *args: str, cwd: Path | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FABRIEK, *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIEK_")}
    env.update(
        FABRIEK_HOME=str(home),
        FABRIEK_CONFIG=str(home.parent / "client.json"),
        FABRIEK_CPUS="2",
        FABRIEK_MEMORY="4G",
        FABRIEK_GPUS="fake:2:test-gpu",
        FABRIEK_KILL_GRACE_SECONDS="1",
        FABRIEK_WORKDIR_MAX_BYTES=str(4 * 1024 * 1024),
        FABRIEK_WORKERS="2",  # API workers as in production, but cheap to start on 2 cores
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def start_server(home: Path, **extra: str) -> ServerProcess:
    home.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(home=home, port=free_port(), env=server_env(home, **extra))
    server.start()
    return server


def kill_jobs(home: Path) -> None:
    """End every job process a test server left behind (they outlive the server by design)."""
    for shim_file in (home / "jobs").glob("*/shim.json"):
        for name in ("started.json", "shim.json"):
            path = shim_file.parent / name
            # The job wrote these: a test's job may have made one a FIFO or a link to /dev/zero
            # (reading that filled 24 GB of memory), so read them as the controller does.
            record = read_job_file(path)
            try:
                pid = json.loads(record or b"")["pid"]
                os.killpg(pid, signal.SIGKILL) if name == "started.json" else os.kill(
                    pid, signal.SIGKILL
                )
            except (OSError, ValueError, KeyError):
                pass
