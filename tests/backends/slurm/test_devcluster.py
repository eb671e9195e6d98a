"""The private Slurm dev cluster against real daemons: batch jobs, squeue --json, scancel, two nodes in
network namespaces, sacct through slurmdbd, a clean stop and the command line.

Skipped where `unavailable()` says a cluster cannot start here (not root, Slurm not installed, ...),
except with FABRIEK_REQUIRE_SLURM=1 (CI), where that fails instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabriek.backends.slurm import devcluster
from fabriek.backends.slurm.devcluster import DevCluster
from tests.backends.slurm.conftest import require_slurm as require
from tests.helpers import wait_for

require(devcluster.unavailable())


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with devcluster.start(tmp_path_factory.mktemp("dc1")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    require(devcluster.unavailable(nodes=2))
    with devcluster.start(tmp_path_factory.mktemp("dc2"), nodes=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def accounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    require(devcluster.unavailable(accounting=True))
    with devcluster.start(tmp_path_factory.mktemp("dca"), accounting=True) as cluster:
        yield cluster


def submit(cluster: DevCluster, *args: str) -> int:
    return int(cluster.run("sbatch", "--parsable", *args).stdout.strip())


def job_state(cluster: DevCluster, job_id: int) -> str:
    shown = cluster.run("scontrol", "-o", "show", "job", str(job_id), check=False).stdout
    fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
    return fields.get("JobState", "")


def job_processes(cluster: DevCluster, job_id: int) -> list[int]:
    """Pids of the processes that run this job's tasks (found by their Slurm environment)."""
    marks = {f"SLURM_CLUSTER_NAME={cluster.name}".encode(), f"SLURM_JOB_ID={job_id}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if marks <= environ:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


# -- one node ---------------------------------------------------------------------------------------


def test_a_batch_job_runs_and_writes_its_output(single: DevCluster) -> None:
    out = single.root / "hi.out"
    job_id = submit(single, f"--output={out}", "--wrap", "echo hi")

    wait_for(lambda: out.exists() and out.read_text() == "hi\n", what=f"{out} to say hi")
    record = f"JobId={job_id} "
    line = wait_for(
        lambda: next((x for x in _lines(single.jobcomp_file) if x.startswith(record)), None),
        what=f"job {job_id} in {single.jobcomp_file}",
    )
    assert "JobState=COMPLETED" in line
    assert f"Partition={single.partition}" in line


def test_squeue_json_lists_a_running_job_and_scancel_ends_it(single: DevCluster) -> None:
    job_id = submit(single, "--output=/dev/null", "--wrap", "sleep 300")

    def running() -> dict[str, object] | None:
        jobs = json.loads(single.run("squeue", "--json").stdout)["jobs"]
        job = next((j for j in jobs if j["job_id"] == job_id), None)
        states = job and job["job_state"]
        # 22.05 gives a string; later versions give a list of flags.
        return job if states in ("RUNNING", ["RUNNING"]) else None

    job = wait_for(running, what=f"job {job_id} RUNNING in squeue --json")
    assert job["nodes"] == "node1"
    assert job["partition"] == single.partition
    tasks = wait_for(lambda: job_processes(single, job_id), what=f"job {job_id}'s sleep")

    single.run("scancel", str(job_id))

    wait_for(lambda: job_state(single, job_id) == "CANCELLED", what=f"job {job_id} CANCELLED")
    wait_for(lambda: not any(alive(p) for p in tasks), what=f"job {job_id}'s sleep to end")


def test_the_cluster_describes_itself(single: DevCluster) -> None:
    assert single.env == {"SLURM_CONF": str(single.conf)}
    assert single.nodes == ["node1"] and not single.accounting
    node = single.run("scontrol", "-o", "show", "node", "node1").stdout
    assert f"CPUTot={single.cpus_per_node} " in node
    assert f"RealMemory={single.memory_mb_per_node} " in node
    config = single.run("scontrol", "show", "config").stdout
    assert re.search(rf"^ClusterName\s*=\s*{single.name}$", config, re.MULTILINE)
    assert re.search(r"^KillWait\s*=\s*5 sec$", config, re.MULTILINE)


# -- two nodes --------------------------------------------------------------------------------------


def test_srun_over_two_nodes_runs_one_task_on_each(pair: DevCluster) -> None:
    ran = pair.run("srun", "-N2", "-n2", "sh", "-c", "echo $SLURMD_NODENAME", timeout=30)

    assert sorted(ran.stdout.split()) == ["node1", "node2"]
    assert pair.node_addrs["node2"] != pair.node_addrs["node1"]
    assert set(pair.netns) <= set(ip("netns", "list").split())


# -- accounting -------------------------------------------------------------------------------------


def test_a_finished_job_appears_in_sacct(accounted: DevCluster) -> None:
    job_id = submit(accounted, "--output=/dev/null", "--wrap", "true")

    def record() -> list[str] | None:
        rows = accounted.run(
            "sacct", "-P", "-n", "-j", str(job_id), "-o", "JobID,State,ExitCode,Elapsed"
        ).stdout
        row = next((r.split("|") for r in rows.splitlines() if r.startswith(f"{job_id}|")), None)
        return row if row and row[1] == "COMPLETED" else None

    row = wait_for(record, timeout=30, what=f"job {job_id} COMPLETED in sacct")
    assert row[2] == "0:0"


# -- stopping and failing ---------------------------------------------------------------------------


def test_stop_leaves_no_daemon_job_namespace_link_or_database(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require(devcluster.unavailable(nodes=2, accounting=True))
    with devcluster.start(tmp_path_factory.mktemp("dcs"), nodes=2, accounting=True) as cluster:
        job_id = submit(cluster, "--output=/dev/null", "-N2", "--wrap", "srun sleep 300")

        def all_tasks() -> list[int] | None:
            found = job_processes(cluster, job_id)
            return found if len(found) >= 4 else None  # batch shell, srun, a sleep on each node

        tasks = wait_for(all_tasks, what=f"job {job_id}'s processes")
        daemons = cluster.pids()
        netns, links, database = cluster.netns, cluster.host_interfaces, cluster.database
        assert len(daemons) == 5 and netns and links and database
        assert set(cluster.processes()) >= {*daemons.values(), *tasks}

        cluster.stop()

        assert [p for p in [*daemons.values(), *tasks] if alive(p)] == []
        assert cluster.processes() == []
        assert not set(netns) & set(ip("netns", "list").split())
        assert not any(f" {link}@" in ip("-o", "link") for link in links)
        assert database not in cluster.mariadb.execute("SHOW DATABASES").stdout.split()
        cluster.stop()  # idempotent


@pytest.mark.parametrize(
    ("fake_slurmd", "error"),
    [
        ("echo 'no node for you' >&2; exit 3", "slurmd:node1 exited with status 3"),
        ("exec sleep 300", "timed out waiting for every node idle"),
    ],
    ids=["slurmd-exits", "node-never-registers"],
)
def test_a_failed_start_raises_with_the_log_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slurmd: str, error: str
) -> None:
    fake = tmp_path / "bin" / "slurmd"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho fake slurmd here\n{fake_slurmd}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    root = tmp_path / "c"

    with pytest.raises(RuntimeError, match=error) as failed:
        devcluster.start(root, timeout=3)

    assert f"--- {root}/log/slurmd-node1.out" in str(failed.value)
    assert "fake slurmd here" in str(failed.value)
    # Every daemon runs in the cluster's root: none may be left.
    assert [p for p in Path("/proc").glob("[0-9]*") if _cwd(p) == root and alive(int(p.name))] == []


def test_the_command_line_runs_a_cluster_until_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    with open(out, "wb") as sink:
        cli = subprocess.Popen(
            [sys.executable, "-m", "fabriek.backends.slurm.devcluster", "up", str(tmp_path / "c")],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "stops it" in out.read_text() or cli.poll() is not None, timeout=60)
        printed = out.read_text()
        assert f"export SLURM_CONF={tmp_path / 'c' / 'etc' / 'slurm.conf'}\n" in printed, printed
        pids = [int(line.split()[-1]) for line in printed.splitlines() if " pid " in line]
        env = {**os.environ, "SLURM_CONF": str(tmp_path / "c" / "etc" / "slurm.conf")}
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=True
        )
        assert sinfo.stdout.split() == ["idle"]
    finally:
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 0
    assert len(pids) == 3 and not any(alive(p) for p in pids)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _cwd(proc: Path) -> Path | None:
    try:
        return Path(os.readlink(proc / "cwd"))
    except OSError:
        return None
