"""kill -9 the server while jobs run, start it again: nothing lost, nothing run twice, true final states."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, free_port, server_env, wait_for

FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def test_kill_and_restart(tmp_path: Path, database_env: dict[str, str]) -> None:
    server = ServerProcess(
        home=tmp_path / "home", port=free_port(), env=server_env(tmp_path / "home", **database_env)
    )
    server.home.mkdir()
    server.start()
    try:

        def submit(tag: str, script: str) -> int:
            with server.http() as http:
                r = http.post(
                    "/jobs",
                    json={
                        "name": tag,
                        "argv": ["sh", "-c", f'echo {tag} >> "$FABRIEK_OUTPUT_DIR/runs"; {script}'],
                        "memory_bytes": 2**30,
                        "time_limit_s": 60,
                    },
                )
            assert r.status_code == 201, r.text
            return int(r.json()["id"])

        quick = submit("quick", "true")
        wait_for(lambda: state(server, quick) == "succeeded", what="the quick job")
        long = submit("long", "sleep 6")  # runs through the outage
        ending = submit("ending", "sleep 2; exit 3")  # ends while the server is down
        waiting = [
            submit(f"waiting{i}", "sleep 0.2") for i in range(3)
        ]  # 2 CPUs are taken: they wait
        wait_for(
            lambda: state(server, long) == state(server, ending) == "running",
            what="two running jobs",
        )
        assert {state(server, j) for j in waiting} == {"pending"}
        long_pid = _job_pid(server, long)

        server.kill9()
        wait_for(
            lambda: (_job_dir(server, ending) / "result.json").exists(),
            timeout=10,
            what="the job to end while the server is down",
        )
        server.port = free_port()
        server.start()

        everyone = [quick, long, ending, *waiting]
        wait_for(
            lambda: all(state(server, j) in FINAL for j in everyone),
            timeout=40,
            what="all jobs to finish",
        )
        jobs = {j: _job(server, j) for j in everyone}
        assert (
            jobs[long]["state"] == "succeeded" and _job_pid(server, long) == long_pid
        )  # adopted, not rerun
        assert jobs[ending]["state"] == "failed" and jobs[ending]["exit_code"] == 3
        assert all(jobs[j]["state"] == "succeeded" for j in [quick, *waiting])
        # Each ran exactly once: one run directory each (_job_dir), one line in it.
        lines = [(_job_dir(server, j) / "output" / "runs").read_text() for j in everyone]
        assert lines == [f"{tag}\n" for tag in ("quick", "long", "ending")] + [
            f"waiting{i}\n" for i in range(3)
        ]
        for job in jobs.values():  # exactly one start and one end each in the history
            to_states = [e["to_state"] for e in job["events"]]
            assert to_states.count("running") == 1 and sum(s in FINAL for s in to_states) == 1, (
                to_states
            )
        listed = json.loads(server.cli("jobs", "--json").stdout)
        assert len(listed) == len(everyone)
    finally:
        server.stop()


def _job(server: ServerProcess, job_id: int) -> dict:  # type: ignore[type-arg]
    with server.http() as http:
        return http.get(f"/jobs/{job_id}").json()  # type: ignore[no-any-return]


def state(server: ServerProcess, job_id: int) -> str:
    return str(_job(server, job_id)["state"])


def _job_pid(server: ServerProcess, job_id: int) -> int:
    return int(json.loads((_job_dir(server, job_id) / "started.json").read_text())["pid"])


def _job_dir(server: ServerProcess, job_id: int) -> Path:
    [found] = (server.home / "jobs").glob(f"{job_id}-*")
    return found


def test_two_servers_on_one_postgresql_database_are_refused(tmp_path: Path, pg_server: str) -> None:
    import subprocess

    from tests.helpers import FABRIEK

    name, url = create_pg_database(pg_server)
    first = ServerProcess(
        home=tmp_path / "a",
        port=free_port(),
        env=server_env(tmp_path / "a", FABRIEK_DATABASE_URL=url),
    )
    first.home.mkdir()
    first.start()
    try:
        env = server_env(tmp_path / "b", FABRIEK_DATABASE_URL=url)
        second = subprocess.run(
            [FABRIEK, "up", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 5 and "against this database" in second.stderr
    finally:
        first.stop()
        drop_pg_database(pg_server, name)
