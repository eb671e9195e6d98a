"""The Slurm backend against a real Slurm cluster: submission (exact resources, literal strings),
multi-node jobs with the torch.distributed environment, state and exit codes, cancel, crash
recovery by the job's comment, and sacct's usage."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from fabriek.backends.base import Handle, LaunchSpec, Observation, Phase
from fabriek.backends.slurm.backend import SlurmBackend, _finished, _parse_sacct, _squeue_record
from fabriek.backends.slurm.devcluster import DevCluster
from fabriek.core.jobs import JobState, Resources
from tests.backends.slurm.conftest import partition_on
from tests.helpers import wait_for

MB = 2**20
# Everything a shell would act on: quotes, substitutions, separators, globs, a newline.
NASTY = 'it\'s "quoted" $(touch PWNED) `touch PWNED2` ; rm -rf * && echo $HOME | cat\nline 2  x'


def spec(
    job_id: int,
    argv: list[str],
    *,
    name: str = "job",
    env: dict[str, str] | None = None,
    nodes: int = 1,
    cpus: int = 1,
    memory: int = 128 * MB,
    time_limit_s: int = 120,
    workdir: Path | None = None,
    instance: str = "i1",
) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        name=name,
        argv=argv,
        env=env or {},
        resources=Resources(cpus, memory, 0),
        gpu_ids=(),
        time_limit_s=time_limit_s,
        workdir_archive=workdir,
        instance=instance,
        nodes=nodes,
    )


def finish(
    backend: SlurmBackend, handles: dict[int, Handle], timeout: float = 60
) -> dict[int, Observation]:
    def ended() -> dict[int, Observation] | None:
        seen = backend.poll(handles)
        return seen if all(o.phase == Phase.FINISHED for o in seen.values()) else None

    return wait_for(ended, timeout=timeout, interval=0.3, what=f"jobs {sorted(handles)} to end")


@pytest.fixture
def backend(slurm_pair: DevCluster, tmp_path: Path) -> SlurmBackend:
    return SlurmBackend(partition_on(slurm_pair, tmp_path / "shared"))


def squeue_job(cluster: DevCluster, slurm_id: int) -> dict[str, object]:
    jobs = json.loads(cluster.run("squeue", "--json").stdout)["jobs"]
    return next(j for j in jobs if j["job_id"] == slurm_id)


def test_user_strings_reach_the_job_literally(
    backend: SlurmBackend, slurm_pair: DevCluster, tmp_path: Path
) -> None:
    archive = tmp_path / "work.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # a workdir file whose name is as nasty
        data = b"payload\n"
        info = tarfile.TarInfo("dir with 'quotes' and $(x)/file;`y`.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    script = (
        'printf "<%s>\\n" "$@"; printf "env<%s>\\n" "$NASTY"; '
        "cat \"dir with 'quotes' and \\$(x)/file;\\`y\\`.txt\""
    )
    handle = backend.submit(
        spec(
            1,
            ["sh", "-c", script, "sh", NASTY, "plain"],
            name="name 'with' \"quotes\" $(touch PWNED3) `id`; x",
            env={"NASTY": NASTY},
            workdir=archive,
        )
    )
    seen = finish(backend, {1: handle})[1]
    log = (Path(handle["dir"]) / "stdout").read_text()
    assert seen.outcome == JobState.SUCCEEDED, log
    assert f"<{NASTY}>\n<plain>\n" in log
    assert f"env<{NASTY}>" in log
    assert "payload" in log
    job = squeue_job(slurm_pair, handle["slurm_id"])
    assert job["name"] == "name 'with' \"quotes\" $(touch PWNED3) `id`; x"
    assert job["comment"] == "fabriek:1:i1"
    # Nothing was run by a shell anywhere: no file was touched in any directory involved.
    for where in (Path(handle["dir"]), Path(handle["dir"]) / "work", tmp_path, Path.cwd()):
        assert not list(where.glob("PWNED*")), where


def test_resources_are_translated_exactly(backend: SlurmBackend, slurm_pair: DevCluster) -> None:
    handle = backend.submit(
        spec(2, ["sleep", "30"], name="sized", cpus=2, memory=300 * MB, time_limit_s=125, nodes=2)
    )
    try:
        job = squeue_job(slurm_pair, handle["slurm_id"])
        assert job["partition"] == slurm_pair.partition
        assert job["node_count"] == 2
        assert (job["tasks_per_node"], job["tasks"]) == (1, 2)
        assert (job["minimum_cpus_per_node"], job["cpus"]) == (2, 4)  # 2 CPUs for its task
        assert job["memory_per_node"] == 300
        assert job["time_limit"] == 3  # minutes, rounded up: 125 s
        shown = slurm_pair.run("scontrol", "show", "job", "-o", str(handle["slurm_id"])).stdout
        assert f"StdOut={Path(handle['dir']) / 'stdout'} " in shown
        assert f"WorkDir={handle['dir']} " in shown
    finally:
        backend.cancel(2, handle)


def test_multi_node_tasks_get_the_distributed_environment(backend: SlurmBackend) -> None:
    script = 'echo "task node=$SLURMD_NODENAME rank=$RANK local=$LOCAL_RANK world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT nnodes=$FABRIEK_NNODES out=$FABRIEK_OUTPUT_DIR"'
    handle = backend.submit(spec(3, ["sh", "-c", script], nodes=2))
    assert finish(backend, {3: handle})[3].outcome == JobState.SUCCEEDED
    lines = sorted(
        line for line in (Path(handle["dir"]) / "stdout").read_text().splitlines() if "task" in line
    )
    assert len(lines) == 2, lines
    fields = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines]
    assert {f["node"] for f in fields} == {"node1", "node2"}
    assert sorted(f["rank"] for f in fields) == ["0", "1"]
    assert {f["world"] for f in fields} == {"2"} and {f["local"] for f in fields} == {"0"}
    assert len({f["master"] for f in fields}) == 1  # every task meets at the same address
    assert {f["out"] for f in fields} == {str(Path(handle["dir"]) / "outputs")}


def test_torch_distributed_trains_across_two_nodes(backend: SlurmBackend) -> None:
    """examples/ddp_train.py: two processes on two Slurm nodes (gloo, CPU) train one model."""
    if importlib.util.find_spec("torch") is None:
        if os.environ.get("FABRIEK_REQUIRE_TORCH") == "1":
            pytest.fail("FABRIEK_REQUIRE_TORCH=1 but torch is not installed")
        pytest.skip("torch is not installed (pip install torch==2.13.0 for the CPU build)")
    example = Path(__file__).parents[3] / "examples" / "ddp_train.py"
    handle = backend.submit(spec(13, [sys.executable, str(example)], nodes=2, memory=900 * MB))
    seen = finish(backend, {13: handle}, timeout=180)[13]
    log = (Path(handle["dir"]) / "stdout").read_text()
    assert seen.outcome == JobState.SUCCEEDED, log
    ranks = sorted(line for line in log.splitlines() if line.startswith("rank "))
    assert [r.split(":")[0] for r in ranks] == ["rank 0/2 on node1", "rank 1/2 on node2"], log
    assert all("w=3.000 b=-2.000" in r and "same-as-rank-0=True" in r for r in ranks), ranks
    assert (Path(handle["dir"]) / "outputs" / "model.pt").stat().st_size > 0


def test_exit_codes_and_missing_commands(backend: SlurmBackend) -> None:
    handles = {
        4: backend.submit(spec(4, ["sh", "-c", "exit 3"])),
        5: backend.submit(spec(5, ["/no/such/program"])),
        6: backend.submit(spec(6, ["sh", "-c", "kill -KILL $$"])),
    }
    seen = finish(backend, handles)
    assert (seen[4].outcome, seen[4].exit_code) == (JobState.FAILED, 3)
    assert "exited with code 3" in (seen[4].reason or "")
    assert (seen[5].outcome, seen[5].exit_code) == (JobState.FAILED, 127)
    assert "cannot start" in (seen[5].reason or "")
    assert (seen[6].outcome, seen[6].signal) == (JobState.FAILED, 9)
    assert seen[4].usage is not None and seen[4].usage.wall_s >= 0


def test_cancel_stops_a_running_job_and_is_idempotent(backend: SlurmBackend) -> None:
    handle = backend.submit(
        spec(7, ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 60 & wait"])
    )
    log = Path(handle["dir"]) / "stdout"
    # Running in Slurm is not yet running the command: wait until its trap is set.
    wait_for(lambda: log.exists() and "ready" in log.read_text(), timeout=30, what="job 7 ready")
    backend.cancel(7, handle)
    backend.cancel(7, handle)
    seen = finish(backend, {7: handle}, timeout=30)[7]
    assert seen.outcome == JobState.CANCELLED
    assert "got TERM" in log.read_text()  # asked first, not killed
    backend.cancel(7, handle)  # a finished job is left alone


def test_cancel_removes_a_job_still_waiting_in_slurm(
    backend: SlurmBackend, slurm_pair: DevCluster
) -> None:
    # Held in Slurm: it waits there until released, as a job behind others' would.
    handle = backend.submit(spec(8, ["true"]))
    slurm_pair.run("scontrol", "hold", str(handle["slurm_id"]))
    assert backend.poll({8: handle})[8].phase == Phase.STARTING
    backend.cancel(8, handle)
    assert finish(backend, {8: handle}, timeout=20)[8].outcome == JobState.CANCELLED


def test_submission_is_idempotent_and_found_again_after_a_crash(
    backend: SlurmBackend, slurm_pair: DevCluster
) -> None:
    job = spec(9, ["sleep", "20"], instance="crash")
    first = backend.submit(job)
    assert backend.submit(job) == first  # adopted, not submitted again
    # A crash between sbatch's answer and recording it: only the marker is left.
    (Path(first["dir"]) / "submitted").unlink()
    again = SlurmBackend(backend.config).submit(job)
    assert again["slurm_id"] == first["slurm_id"]
    assert backend.was_launched(job)
    comments = [j["comment"] for j in json.loads(slurm_pair.run("squeue", "--json").stdout)["jobs"]]
    assert comments.count("fabriek:9:crash") == 1
    backend.cancel(9, again)


def test_a_submission_that_never_reached_slurm_is_made_once(backend: SlurmBackend) -> None:
    job = spec(10, ["true"], instance="never")
    backend._prepare(backend.job_dir(10, "never"), job)  # then a crash, before sbatch ran
    assert backend.was_launched(job)  # it may have been: Slurm is asked before submitting
    handle = backend.submit(job)
    assert finish(backend, {10: handle})[10].outcome == JobState.SUCCEEDED


def test_jobs_slurm_forgot_are_lost_or_read_from_the_completion_log(
    backend: SlurmBackend, slurm_pair: DevCluster
) -> None:
    handle = backend.submit(spec(11, ["sh", "-c", "exit 4"]))
    finish(backend, {11: handle})
    # As if squeue forgot it (MinJobAge) and the wrapper's files were lost: the completion log.
    for name in ("result.json", "started.json"):
        (Path(handle["dir"]) / name).unlink()
    backend.squeue = lambda: {}  # type: ignore[method-assign]
    seen = backend.poll({11: handle})[11]
    assert (seen.phase, seen.outcome, seen.exit_code) == (Phase.FINISHED, JobState.FAILED, 4)
    blind = SlurmBackend(partition_on(slurm_pair, backend.config.shared_dir, jobcomp_file=None))
    blind.squeue = lambda: {}  # type: ignore[method-assign]
    assert blind.poll({11: handle})[11].phase == Phase.LOST


def test_sacct_gives_usage_and_exit_codes(slurm_accounted: DevCluster, tmp_path: Path) -> None:
    backend = SlurmBackend(partition_on(slurm_accounted, tmp_path / "shared"))
    burn = "python3 -c 'import time\nt=time.time()\nwhile time.time()-t<1.5: pass'; exit 2"
    handle = backend.submit(spec(12, ["sh", "-c", burn]))
    seen = finish(backend, {12: handle}, timeout=90)[12]
    assert (seen.outcome, seen.exit_code) == (JobState.FAILED, 2)
    assert seen.usage is not None
    assert seen.usage.cpu_s >= 1.0, seen.usage
    assert seen.usage.max_rss_bytes > 0
    # sacct's own figures are there, too (TotalCPU of the steps).
    record = backend.finished_records([handle["slurm_id"]])[handle["slurm_id"]]
    assert record.usage is not None and record.usage.cpu_s >= 1.0, record


# --- Slurm's answers, as Slurm 22.05 prints them ---------------------------------------------
@pytest.mark.parametrize(
    ("state", "phase", "outcome"),
    [
        ("PENDING", Phase.STARTING, None),
        ("CONFIGURING", Phase.STARTING, None),
        ("RUNNING", Phase.RUNNING, None),
        ("COMPLETING", Phase.RUNNING, None),
        ("COMPLETED", Phase.FINISHED, JobState.SUCCEEDED),
        ("FAILED", Phase.FINISHED, JobState.FAILED),
        ("CANCELLED", Phase.FINISHED, JobState.CANCELLED),
        ("TIMEOUT", Phase.FINISHED, JobState.TIMED_OUT),
        ("NODE_FAIL", Phase.FINISHED, JobState.FAILED),
        ("OUT_OF_MEMORY", Phase.FINISHED, JobState.FAILED),
        ("PREEMPTED", Phase.FINISHED, JobState.FAILED),
        ("BOOT_FAIL", Phase.FINISHED, JobState.FAILED),
        ("DEADLINE", Phase.FINISHED, JobState.TIMED_OUT),
    ],
)
def test_every_slurm_state_maps(
    backend: SlurmBackend, tmp_path: Path, state: str, phase: Phase, outcome: JobState | None
) -> None:
    record = _squeue_record(
        {
            "job_state": state,
            "state_reason": "Resources",
            "start_time": 1_700_000_000,
            "end_time": 1_700_000_100,
            "exit_code": 0,
        }
    )
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "submitted").write_text("1")
    seen = backend._observe(1, job_dir, record)
    assert (seen.phase, seen.outcome) == (phase, outcome)
    if state in ("TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"):
        assert state in (seen.reason or "")  # the reason says what Slurm said
    if state == "PENDING":
        assert seen.reason == "waiting in Slurm: Resources"


def test_sacct_lines_parse() -> None:
    out = (
        "41|COMPLETED|0:0|2026-11-26T06:00:00|2026-11-26T06:00:10|10|00:08.500|||None\n"
        "41.batch|COMPLETED|0:0|2026-11-26T06:00:00|2026-11-26T06:00:10|10|00:08.500|2048K|1500|\n"
        "42|CANCELLED by 0|0:15|2026-11-26T06:00:00|2026-11-26T06:01:00|60|1-00:00:01|||None\n"
        "42.0|CANCELLED|0:15|2026-11-26T06:00:00|2026-11-26T06:01:00|60|00:00:01|1.5M|0|\n"
    )
    records = _parse_sacct(out)
    assert records[41].state == "COMPLETED" and records[41].exit_code == 0
    assert records[41].usage is not None and records[41].usage.cpu_s == 8.5
    assert records[41].usage.max_rss_bytes == 2048 * 1024
    assert (records[42].state, records[42].signal) == ("CANCELLED", 15)
    assert records[42].usage is not None and records[42].usage.cpu_s == 86401
    assert records[42].usage.max_rss_bytes == int(1.5 * MB)
    seen = _finished(records[42], None, None)
    assert seen.outcome == JobState.CANCELLED


def test_every_node_of_a_job_is_metered(backend: SlurmBackend) -> None:
    burn = "python3 -c 'import time\nt=time.time()\nwhile time.time()-t<1: pass'"
    handles = {
        14: backend.submit(spec(14, ["sh", "-c", burn])),
        15: backend.submit(spec(15, ["sh", "-c", burn], nodes=2)),
    }
    seen = finish(backend, handles)
    for job_id, nodes in ((14, {"node1"}), (15, {"node1", "node2"})):
        job_dir = Path(handles[job_id]["dir"])
        assert {p.name for p in (job_dir / "nodes").iterdir()} == nodes
        energy = seen[job_id].energy
        assert energy is not None, (job_dir / "stdout").read_text()
        assert set(energy.components) == {"cpu", "dram"}  # no GPUs; no RAPL on this machine
        cpu = energy.components["cpu"]
        assert not cpu.measured and "estimate" in cpu.method
        # An estimate from the CPU time the command used: about a second's worth per node.
        per_node = [
            json.loads((job_dir / "nodes" / n / "energy.json").read_text())["cpu"]["joules"]
            for n in sorted(nodes)
        ]
        assert all(j > 0 for j in per_node)
        assert cpu.joules == pytest.approx(sum(per_node))
        assert sum(energy.by_hour.values()) == pytest.approx(energy.joules)


def test_slurm_consumed_energy_replaces_estimates(backend: SlurmBackend, tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    node = job_dir / "nodes" / "node1"
    node.mkdir(parents=True)
    estimate = {"joules": 100.0, "method": "estimate: 12 W per busy core", "measured": False}
    (node / "energy.json").write_text(
        json.dumps(
            {
                "gpu": {"joules": 500.0, "method": "NVML energy counter", "measured": True},
                "cpu": estimate,
                "dram": {**estimate, "joules": 10.0},
            }
        )
    )
    (node / "energy.jsonl").write_text(
        '{"t": 1764136800, "gpu": 0, "cpu": 0, "dram": 0}\n'
        '{"t": 1764140400, "gpu": 500, "cpu": 100, "dram": 10}\n'
    )
    record = _parse_sacct(
        "7|COMPLETED|0:0|2025-11-26T06:00:00|2025-11-26T07:00:00|3600|00:01.000||250000|None\n"
    )[7]
    energy = backend._energy(job_dir, record)
    assert energy is not None
    assert set(energy.components) == {"gpu", "cpu"}
    assert energy.components["gpu"].joules == 500.0  # NVML's, per GPU, kept
    assert energy.components["cpu"].joules == 250000.0
    assert energy.components["cpu"].measured and "ConsumedEnergy" in energy.components["cpu"].method
    assert sum(energy.by_hour.values()) == pytest.approx(250500.0)
    off = SlurmBackend(partition_on_config(backend, consumed_energy=False))
    assert off._energy(job_dir, record).components["cpu"].joules == 100.0  # type: ignore[union-attr]


def partition_on_config(backend: SlurmBackend, **changes: object):  # type: ignore[no-untyped-def]
    from dataclasses import replace as changed

    return changed(backend.config, **changes)
