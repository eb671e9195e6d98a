"""fabriek's server driving a real Slurm cluster beside the local machine: `fabriek submit` to a Slurm
partition, single- and multi-node, followed with the same commands as local jobs; and the server
killed while Slurm jobs run or finish, then restarted: states caught up, nothing submitted twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabriek.backends.slurm.devcluster import DevCluster
from tests.backends.slurm.conftest import partitions_toml
from tests.helpers import ServerProcess, free_port, server_env, wait_for

FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def make_server(
    tmp_path: Path, cluster: DevCluster, shared: Path, *, local: bool = True, **extra: str
) -> ServerProcess:
    """A server beside the cluster; `shared`: its shared directory, where the projects' uids
    the jobs run as may pass."""
    partitions = tmp_path / "partitions.toml"
    partitions.write_text(partitions_toml(cluster, shared, local=local))
    home = tmp_path / "home"
    home.mkdir()
    return ServerProcess(
        home=home,
        port=free_port(),
        env=server_env(home, FABRIEK_PARTITIONS_FILE=str(partitions), **extra),
    )


@pytest.fixture
def server(tmp_path: Path, slurm_pair: DevCluster, open_dir: Path) -> Iterator[ServerProcess]:
    server = make_server(tmp_path, slurm_pair, open_dir)
    server.start()
    yield server
    server.stop()


def job(server: ServerProcess, job_id: int) -> dict[str, object]:
    with server.http() as http:
        return dict(http.get(f"/jobs/{job_id}").json())


def submitted_comments(cluster: DevCluster, shared: Path) -> list[str]:
    """The comments of the jobs Slurm has from the server whose shared directory is `shared`
    (squeue keeps ended jobs for MinJobAge)."""
    jobs = json.loads(cluster.run("squeue", "--json").stdout)["jobs"]
    return [
        str(j["comment"])
        for j in jobs
        if str(j.get("current_working_directory", "")).startswith(f"{shared}/")
    ]


def test_submit_multi_node_to_slurm_and_follow_it(server: ServerProcess, tmp_path: Path) -> None:
    script = 'echo "rank $RANK of $WORLD_SIZE on $SLURMD_NODENAME"; echo out > "$FABRIEK_OUTPUT_DIR/r$RANK"'
    done = server.cli(
        "submit", "--partition", "slurm", "--nodes", "2", "--cpus", "1", "--mem", "256M",
        "--time", "2m", "--name", "two nodes", "--no-workdir", "--wait", "--", "sh", "-c", script,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 of 2 on node1",
        "rank 1 of 2 on node2",
    ]
    job_id = int(done.stderr.split("submitted job ")[1].split()[0])
    shown = job(server, job_id)
    assert (shown["state"], shown["backend"], shown["nodes"]) == ("succeeded", "slurm", 2)
    assert shown["exit_code"] == 0
    # Both nodes metered (estimates here: no GPUs, no RAPL), and the footprint accounted.
    assert set(shown["energy"]) == {"cpu", "dram"}, shown["energy"]  # type: ignore[arg-type]
    assert shown["footprint"] is not None and shown["footprint"]["it_kwh"] > 0  # type: ignore[index]
    status = server.cli("status", str(job_id))
    assert "partition" in status.stdout and "slurm" in status.stdout
    assert "2 nodes with 1 CPUs" in status.stdout
    logs = server.cli("logs", str(job_id))
    assert "rank 1 of 2 on node2" in logs.stdout
    out = tmp_path / "out"
    assert server.cli("download", str(job_id), str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["r0", "r1"]  # both nodes' outputs


def test_follow_a_running_slurm_job_and_cancel_it(server: ServerProcess, tmp_path: Path) -> None:
    with server.http() as http:
        r = http.post(
            "/jobs",
            json={
                "name": "ticker",
                "argv": ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.5; done; sleep 60"],
                "partition": "slurm",
                "memory_bytes": 256 * 2**20,
                "time_limit_s": 120,
            },
        )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    wait_for(lambda: job(server, job_id)["state"] == "running", timeout=30, what="running")
    wait_for(lambda: "tick 3" in server.cli("logs", str(job_id)).stdout, timeout=30, what="tick 3")
    assert server.cli("cancel", str(job_id)).returncode == 0
    follow = server.cli("logs", "--follow", str(job_id), timeout=60)  # ends when the job does
    assert "tick 1\ntick 2\ntick 3\n" in follow.stdout
    assert job(server, job_id)["state"] == "cancelled"


def test_local_and_slurm_side_by_side(server: ServerProcess) -> None:
    ids = {}
    for partition in ("local", "slurm"):
        r = server.cli(
            "submit", "--partition", partition, "--mem", "256M", "--time", "1m", "--no-workdir",
            "--parsable", "--", "sh", "-c", "echo on $0", partition,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        ids[partition] = int(r.stdout)
    for partition, job_id in ids.items():
        wait_for(lambda j=job_id: job(server, j)["state"] in FINAL, timeout=60, what=partition)
        shown = job(server, job_id)
        assert (shown["state"], shown["backend"]) == ("succeeded", partition)
        assert server.cli("logs", str(job_id)).stdout == f"on {partition}\n"


def test_bad_requests_name_the_partition(server: ServerProcess) -> None:
    cases = [
        (["--partition", "slurm", "--nodes", "3"], "asks for 3 nodes but partition slurm has 2"),
        (["--partition", "nope"], "there is no partition 'nope'"),
        (["--partition", "bad name;x"], "invalid partition name"),
        (["--nodes", "0"], "1 to 1024 nodes"),
        (["--partition", "slurm", "--cpus", "99"], "99 CPUs"),
    ]
    for args, message in cases:
        r = server.cli("submit", "--no-workdir", *args, "--", "true")
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    with server.http() as http:
        assert http.get("/jobs").json() == []  # nothing was queued


def test_kill_and_restart_while_slurm_runs_jobs(
    tmp_path: Path, slurm_pair: DevCluster, database_env: dict[str, str], open_dir: Path
) -> None:
    server = make_server(tmp_path, slurm_pair, open_dir, local=False, **database_env)
    server.start()
    try:

        def submit(name: str, script: str, nodes: int = 1) -> int:
            with server.http() as http:
                r = http.post(
                    "/jobs",
                    json={
                        "name": name,
                        "argv": ["sh", "-c", script],
                        "nodes": nodes,
                        "memory_bytes": 256 * 2**20,
                        "time_limit_s": 120,
                    },
                )
            assert r.status_code == 201, r.text
            return int(r.json()["id"])

        long = submit("long", "sleep 6; echo long done", nodes=2)  # runs through the outage
        ending = submit("ending", "sleep 1; exit 3")  # ends while the server is down
        wait_for(
            lambda: job(server, long)["state"] == job(server, ending)["state"] == "running",
            timeout=30,
            what="both running",
        )
        server.kill9()
        runs = open_dir / "projects"  # its project's folder: the jobs run as their project
        wait_for(
            lambda: any((d / "result.json").exists() for d in runs.glob(f"*/{ending}-*")),
            timeout=30,
            what="the ending job to end in Slurm",
        )
        server.start()
        for job_id in (long, ending):
            wait_for(lambda j=job_id: job(server, j)["state"] in FINAL, timeout=60, what="final")
        assert (job(server, long)["state"], job(server, long)["exit_code"]) == ("succeeded", 0)
        assert (job(server, ending)["state"], job(server, ending)["exit_code"]) == ("failed", 3)
        assert server.cli("logs", str(long)).stdout.count("long done") == 2  # two tasks
        comments = submitted_comments(slurm_pair, open_dir)
        assert len(comments) == 2, comments
        for job_id in (long, ending):
            mine = [c for c in comments if c.startswith(f"fabriek:{job_id}:")]
            assert len(mine) == 1, (job_id, mine)  # submitted once, whatever the restart
    finally:
        server.stop()
