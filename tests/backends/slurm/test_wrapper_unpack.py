"""The Slurm wrapper unpacks the workdir on the node, as the job's first step (issue 21, item 5): no
cluster needed, the wrapper is run as Slurm's batch script would run it, on the spec the backend
prepared. It was unpacked by the server while it submitted: uncharged, outside the job's time
limit, beyond a cancel's reach, and in the controller's submission thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabriek.backends.base import LaunchSpec
from fabriek.backends.slurm.backend import SlurmBackend, _finished
from fabriek.backends.slurm.config import SlurmPartition
from fabriek.core.jobs import JobState, Resources
from fabriek.core.workdir_archive import Limits
from tests.archives import file_entry, make_archive, make_many
from tests.helpers import wait_for


def prepared(tmp_path: Path, argv: list[str], archive: Path) -> tuple[SlurmBackend, Path]:
    """The backend's spec for a job with `archive` as its workdir, as sbatch would get it."""
    backend = SlurmBackend(
        SlurmPartition(
            name="slurm",
            partition="batch",
            nodes=1,
            cpus_per_node=2,
            memory_per_node=2**30,
            shared_dir=tmp_path / "shared",
            metering=False,
        ),
        workdir_limits=Limits(max_bytes=8 * 2**20, max_entries=100_000),
    )
    spec = LaunchSpec(
        job_id=1,
        name="unpack",
        argv=argv,
        env={},
        resources=Resources(1, 2**28),
        gpu_ids=(),
        time_limit_s=60,
        workdir_archive=archive,
        instance="i1",
    )
    job_dir = backend.job_dir(1, "i1")
    backend._prepare(job_dir, spec)
    return backend, job_dir


def run_wrapper(backend: SlurmBackend, job_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FABRIEK_"))}
    with open(job_dir / "stdout", "wb") as out, open(job_dir / "stderr", "wb") as err:
        return subprocess.Popen(  # as sbatch --output, --error and --chdir would
            [sys.executable, str(backend._wrapper_path()), "batch", str(job_dir / "spec.json")],
            cwd=job_dir,
            env=env,
            stdout=out,
            stderr=err,
        )


def test_the_workdir_is_unpacked_by_the_wrapper_not_at_submission(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "w.tar.gz", [file_entry("data.txt", b"payload\n")])
    backend, job_dir = prepared(tmp_path, ["cat", "data.txt"], archive)
    assert not (job_dir / "work").exists()  # the submission copied the archive, no more
    assert (job_dir / "workdir.tar.gz").read_bytes() == archive.read_bytes()
    wrapper = run_wrapper(backend, job_dir)
    assert wrapper.wait(30) == 0, (job_dir / "stderr").read_text()
    assert (job_dir / "stdout").read_text() == "payload\n"
    result = json.loads((job_dir / "result.json").read_text())
    started = json.loads((job_dir / "started.json").read_text())
    assert result["exit_code"] == 0 and result["started_at"] == started["started_at"]


def test_an_archive_it_cannot_unpack_fails_the_job_with_a_short_reason(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "w.tar.gz", [file_entry("a"), file_entry("a/b")])
    backend, job_dir = prepared(tmp_path, ["true"], archive)
    assert run_wrapper(backend, job_dir).wait(30) == 1
    result = json.loads((job_dir / "result.json").read_text())
    seen = _finished(None, result, None)
    assert seen.outcome == JobState.FAILED
    assert seen.reason == (
        "could not unpack the workdir: the workdir archive holds 'a/b' below the file 'a'"
    )


@pytest.fixture(scope="module")
def slow_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_many(tmp_path_factory.mktemp("slow") / "many.tar.gz", 60_000)


def test_a_sigterm_stops_the_unpacking_promptly(tmp_path: Path, slow_workdir: Path) -> None:
    """What scancel and Slurm's time limit send: the wrapper stops unpacking, records why, and
    ends by the signal, so Slurm's record (CANCELLED, TIMEOUT) names the outcome."""
    backend, job_dir = prepared(tmp_path, ["true"], slow_workdir)
    wrapper = run_wrapper(backend, job_dir)
    try:
        wait_for(lambda: (job_dir / "started.json").exists(), what="the job's start")
        sent = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(10) == -signal.SIGTERM
        assert time.monotonic() - sent < 3
    finally:
        wrapper.kill()
    result = json.loads((job_dir / "result.json").read_text())
    assert (result["signal"], result["reason"]) == (
        signal.SIGTERM,
        "stopped while its workdir was unpacked",
    )
    assert result["wall_s"] > 0
    assert len(os.listdir(job_dir / "work")) < 60_000
