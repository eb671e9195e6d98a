"""The API on several processes: wake-ups from workers, one SQLite writer across processes, and
workers that are restarted when they die and die with the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fabriek.server.db.engine import WriteLock, make_engine, make_session_factory, transaction
from fabriek.server.workers import RemoteWaker, WakeListener
from tests.helpers import start_server, wait_for


def test_workers_wake_the_controller_through_the_listener() -> None:
    seen: list[bool] = []
    listener = WakeListener(lambda *, submission: seen.append(submission))
    listener.start()
    try:
        waker = RemoteWaker(listener.theirs)
        waker(True)
        waker(False)
        waker(True)
        wait_for(lambda: len(seen) == 3, timeout=5, what="three wake-ups")
        assert seen == [True, False, True]
    finally:
        listener.stop()


def test_sqlite_writers_of_two_processes_take_turns(tmp_path: Path) -> None:
    database = tmp_path / "fabriek.db"
    engine = make_engine(f"sqlite:///{database}")
    sessions = make_session_factory(engine)
    other = (
        "import sys, time\n"
        "from fabriek.server.db.engine import WriteLock, make_engine, make_session_factory, transaction\n"
        "from sqlalchemy import text\n"
        "sessions = make_session_factory(make_engine(sys.argv[1]))\n"
        "print('ready', flush=True)\n"
        "with transaction(sessions) as s:\n"
        "    s.execute(text('INSERT INTO t VALUES (2)'))\n"
        "print('wrote', flush=True)\n"
    )
    try:
        with transaction(sessions) as session:
            session.connection().exec_driver_sql("CREATE TABLE t (v INTEGER)")
        with transaction(sessions) as session:
            session.connection().exec_driver_sql("INSERT INTO t VALUES (1)")
        # Held here with no SQLite transaction open: only the file lock can hold the other back.
        with WriteLock(str(database)):
            proc = subprocess.Popen(
                [sys.executable, "-c", other, f"sqlite:///{database}"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.7)
            assert proc.poll() is None, (
                "the other process wrote while this one held the writer lock"
            )
        # Released: the other writer goes on at once.
        released = time.monotonic()
        assert proc.stdout.readline().strip() == "wrote"
        assert time.monotonic() - released < 2
        assert proc.wait(10) == 0
        with transaction(sessions) as session:
            rows = (
                session.connection().exec_driver_sql("SELECT v FROM t ORDER BY v").scalars().all()
            )
        assert rows == [1, 2]
        assert (tmp_path / "fabriek.db-fabriek-writer.lock").exists()
    finally:
        engine.dispose()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_api_workers_serve_wake_restart_and_die_with_the_server(tmp_path: Path) -> None:
    # The controller would sleep a minute unless woken: a prompt admission proves the wake-up.
    server = start_server(
        tmp_path / "home", FABRIEK_WORKERS="3", FABRIEK_CONTROLLER_INTERVAL_SECONDS="60"
    )
    assert server.proc is not None
    main = server.proc.pid
    try:
        assert httpx.get(server.url + "/api/v1/health").json()["api_processes"] == 3
        workers = wait_for(lambda: len(_children(main)) == 3 and _children(main), what="3 workers")

        # The workers answer while the main process (controller, backend) is stopped; the job
        # waits for the wake-up they sent, which the main process reads when it goes on.
        os.kill(main, signal.SIGSTOP)
        try:
            with server.http() as http:
                r = http.post(
                    "/jobs",
                    json={
                        "name": "w",
                        "argv": ["true"],
                        "memory_bytes": 64 * 2**20,
                        "time_limit_s": 60,
                    },
                )
                assert r.status_code == 201, r.text
                job = r.json()["id"]
                assert http.get(f"/jobs/{job}").json()["state"] == "pending"
        finally:
            os.kill(main, signal.SIGCONT)
        began = time.monotonic()
        with server.http() as http:
            wait_for(
                lambda: http.get(f"/jobs/{job}").json()["state"] == "succeeded",
                timeout=10,
                what="the job submitted through a worker",
            )
        assert time.monotonic() - began < 5

        # A worker that dies is replaced, and the API keeps answering meanwhile.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(_children(main)) == 3 and victim not in _children(main),
            timeout=20,
            what="a new worker",
        )
        for _ in range(10):
            with httpx.Client() as fresh:  # a new connection each time
                assert fresh.get(server.url + "/api/v1/health").status_code == 200

        # The main process killed outright: its workers end too, and free the port.
        workers = _children(main)
        server.kill9()
        wait_for(lambda: not any(_alive(w) for w in workers), timeout=10, what="workers to end")
    finally:
        server.stop()


def test_one_process_serves_everything_with_workers_1(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", FABRIEK_WORKERS="1")
    assert server.proc is not None
    try:
        assert httpx.get(server.url + "/api/v1/health").json()["api_processes"] == 1
        assert _children(server.proc.pid) == set()
        with server.http() as http:
            r = http.post(
                "/jobs",
                json={
                    "name": "one",
                    "argv": ["true"],
                    "memory_bytes": 64 * 2**20,
                    "time_limit_s": 60,
                },
            )
            assert r.status_code == 201, r.text
            wait_for(
                lambda: http.get(f"/jobs/{r.json()['id']}").json()["state"] == "succeeded",
                what="the job",
            )
    finally:
        server.stop()
