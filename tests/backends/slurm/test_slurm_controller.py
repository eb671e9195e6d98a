"""The controller driving a real Slurm partition, on both databases: a preempted Slurm job stops,
goes back to the queue keeping its place, and runs again as a new Slurm job."""

from __future__ import annotations

import shlex
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.slurm.backend import SlurmBackend
from fabriek.backends.slurm.devcluster import DevCluster
from fabriek.core.jobs import JobState
from fabriek.scheduling.model import Decisions, Preemption
from fabriek.server.controller.loop import Controller, PassReport
from fabriek.server.db.models import JobRow
from fabriek.server.services.jobs import get_job, submit_job
from tests.backends.slurm.conftest import partition_on
from tests.conftest import FrozenClock
from tests.helpers import wait_for
from tests.server.factories import make_admin, make_request


def test_a_preempted_slurm_job_is_requeued_and_runs_again(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock, slurm_pair: DevCluster
) -> None:
    # A grace period a starved machine cannot overrun before the job's trap has saved (the job
    # ends as soon as it has: a long grace costs this test nothing).
    backend = SlurmBackend(partition_on(slurm_pair, tmp_path / "shared", grace_seconds=20.0))
    controller = Controller(
        sessions=sessions, backends={"slurm": backend}, clock=clock, workdirs=tmp_path / "w"
    )
    admin, _ = make_admin(sessions, clock())
    # The first run waits to be stopped; the second finds the checkpoint and ends.
    checkpoint = shlex.quote(str(tmp_path / "checkpoint"))
    script = (
        f"if [ -e {checkpoint} ]; then echo resumed; exit 0; fi; "
        f"trap 'touch {checkpoint}; echo saved; exit 1' TERM; echo ready; sleep 60 & wait"
    )
    with sessions() as session, session.begin():
        job = submit_job(
            session,
            actor=admin,
            request=make_request(["sh", "-c", script], mem=256 * 2**20),
            partitions={"slurm": backend.capacity()},
            now=clock(),
        )

    def state() -> JobState:
        controller.run_pass()
        with sessions() as session:
            return get_job(session, actor=admin, job_id=job.id).state

    wait_for(lambda: state() == JobState.RUNNING, timeout=30, what="the first run")
    with sessions() as session:
        first = session.get(JobRow, job.id).handle  # type: ignore[union-attr]
    assert first is not None
    log = Path(first["dir"]) / "stdout"
    wait_for(lambda: log.exists() and "ready" in log.read_text(), timeout=30, what="trap set")
    controller._record_preemptions(
        Decisions(preemptions=[Preemption(job.id, "preempted: pool regional reclaims its GPUs")]),
        clock(),
        PassReport(),
    )
    try:
        wait_for(lambda: state() == JobState.SUCCEEDED, timeout=90, what="the requeued run to end")
    except AssertionError as exc:  # say where it stuck: fabriek's view and Slurm's
        with sessions() as session:
            stuck = get_job(session, actor=admin, job_id=job.id)
        events = [(e.to_state.value, e.reason) for e in stuck.events]
        queue = slurm_pair.run("squeue", "-o", "%i %T %r %k").stdout
        raise AssertionError(f"{exc}: {stuck.state} {stuck.reason} {events}\n{queue}") from exc
    with sessions() as session:
        done = get_job(session, actor=admin, job_id=job.id)
        second = session.get(JobRow, job.id).handle  # type: ignore[union-attr]
    assert done.preemptions == 1
    assert [e.to_state for e in done.events] == [
        JobState.PENDING,
        JobState.ADMITTED,
        JobState.RUNNING,
        JobState.PREEMPTED,
        JobState.PENDING,
        JobState.ADMITTED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert second is not None
    assert second["slurm_id"] != first["slurm_id"]  # a new Slurm job, in a new directory
    assert log.read_text().splitlines()[-1] == "saved"  # SIGTERM first, and it saved
    assert (Path(second["dir"]) / "stdout").read_text().strip() == "resumed"
