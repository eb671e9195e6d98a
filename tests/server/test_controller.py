"""The controller with the real local backend, on both databases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import LaunchSpec
from fabriek.backends.local.backend import LocalBackend
from fabriek.backends.local.gpus import FakeInventory
from fabriek.core.jobs import Job, JobState, Resources
from fabriek.server.controller.loop import Controller, launch_spec
from fabriek.server.db.models import JobEnergyHourRow, JobEventRow, JobRow
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import cancel_job, get_job
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.helpers import wait_for
from tests.server.factories import G, make_admin, make_job


def make_controller(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock, *, sandbox: bool = True
) -> Controller:
    backend = LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(2, 4 * G),
        gpus=FakeInventory(2).detect(),
        kill_grace_seconds=0.5,
        sandbox=sandbox,
    )
    return Controller(
        sessions=sessions, backend=backend, clock=clock, workdirs=tmp_path / "workdirs"
    )


def settle(
    controller: Controller,
    sessions: sessionmaker[Session],
    actor: Actor,
    job_ids: list[int],
    timeout: float = 30,
) -> list[Job]:
    """Run passes until every job is final (as the loop would, but driven by the test)."""

    def all_final() -> list[Job] | None:
        controller.run_pass()
        with sessions() as session:
            jobs = [get_job(session, actor=actor, job_id=i) for i in job_ids]
        return jobs if all(j.state.is_final for j in jobs) else None

    return wait_for(all_final, timeout=timeout, what=f"jobs {job_ids} to finish")


def test_jobs_run_to_their_true_end(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    ok = make_job(sessions, admin, clock(), argv=["sh", "-c", "echo fine"])
    bad = make_job(sessions, admin, clock(), argv=["sh", "-c", "exit 7"])
    slow = make_job(sessions, admin, clock(), argv=["sleep", "30"], time_limit_s=1)
    jobs = settle(controller, sessions, admin, [ok.id, bad.id, slow.id])
    assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT]
    assert jobs[1].exit_code == 7 and "code 7" in (jobs[1].reason or "")
    assert jobs[0].wall_s is not None and jobs[0].cpu_s is not None and jobs[0].gpu_s == 0
    assert [e.to_state.value for e in jobs[0].events] == [
        "pending",
        "admitted",
        "running",
        "succeeded",
    ]


def test_capacity_is_never_oversubscribed(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    ids = [make_job(sessions, admin, clock(), argv=["sleep", "0.5"]).id for _ in range(5)]
    big = make_job(sessions, admin, clock(), argv=["true"], cpus=2, gpus=2).id
    controller.run_pass()
    with sessions() as session:
        states = dict(session.execute(select(JobRow.id, JobRow.state)).all())
        reason = session.get(JobRow, ids[2]).reason  # type: ignore[union-attr]
    assert sorted(s for s in states.values()).count("admitted") == 2  # 2 CPUs: two 1-CPU jobs
    assert "CPUs" in (reason or "")
    jobs = settle(controller, sessions, admin, [*ids, big])
    assert all(j.state == JobState.SUCCEEDED for j in jobs)
    # Replay the intervals: never more than 2 CPUs or 2 GPUs in use at once.
    edges = sorted(
        [(j.started_at, j.resources.cpus, j.resources.gpus) for j in jobs]
        + [(j.finished_at, -j.resources.cpus, -j.resources.gpus) for j in jobs],
        key=lambda e: (e[0], e[1]),
    )
    cpus = gpus = 0
    for _, dc, dg in edges:
        cpus, gpus = cpus + dc, gpus + dg
        assert cpus <= 2 and gpus <= 2


def test_gpu_jobs_get_distinct_gpus(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    ids = [make_job(sessions, admin, clock(), argv=["sleep", "0.3"], gpus=1).id for _ in range(2)]
    controller.run_pass()
    with sessions() as session:
        assigned = [session.get(JobRow, i).gpu_ids for i in ids]  # type: ignore[union-attr]
    assert sorted(assigned) == [[0], [1]]  # type: ignore[type-var]
    settle(controller, sessions, admin, ids)


def test_cancel_a_running_job(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    job = make_job(sessions, admin, clock(), argv=["sleep", "30"])

    def running() -> bool:
        controller.run_pass()
        with sessions() as session:
            return get_job(session, actor=admin, job_id=job.id).state == JobState.RUNNING

    wait_for(running, what="the job to run")
    with sessions() as session, session.begin():
        cancel_job(session, actor=admin, job_id=job.id, now=clock())
    [done] = settle(controller, sessions, admin, [job.id])
    assert done.state == JobState.CANCELLED and done.signal is not None


def test_crash_between_admission_and_launch_launches_once(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """A controller that died after committing `admitted` but before recording the launch."""
    admin, _ = make_admin(sessions, clock())
    job = make_job(
        sessions, admin, clock(), argv=["sh", "-c", "echo run >> $FABRIEK_OUTPUT_DIR/runs"]
    )
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="controller", gpu_ids=[])
    first = make_controller(sessions, tmp_path, clock)
    # Launched, but the handle was never stored.
    spec = _spec_of(first, job.id)
    first.backends["local"].submit(spec)
    second = make_controller(sessions, tmp_path, clock)  # the restarted server
    [done] = settle(second, sessions, admin, [job.id])
    assert done.state == JobState.SUCCEEDED
    local = first.backends["local"]
    assert isinstance(local, LocalBackend)
    assert (local.job_dir(job.id, spec.instance) / "output" / "runs").read_text() == "run\n"


def _spec_of(controller: Controller, job_id: int) -> LaunchSpec:
    with controller.sessions() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        return launch_spec(row, controller.workdirs)


@pytest.mark.parametrize("lost_state", ["admitted", "running"])
def test_lost_job_fails_with_reason(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock, lost_state: str
) -> None:
    """A job whose supervisor is gone without a result (e.g. the machine rebooted) fails, once."""
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock())
    job_dir = tmp_path / "jobs" / str(job.id)
    job_dir.mkdir(parents=True)
    (job_dir / "launched").touch()
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="test", gpu_ids=[])
        if lost_state == "running":
            transition_job(session, row, JobState.RUNNING, at=clock(), actor="test")
        row.handle = {"dir": str(job_dir)}
    controller = make_controller(sessions, tmp_path, clock)
    [done] = settle(controller, sessions, admin, [job.id])
    assert done.state == JobState.FAILED and "supervisor" in (done.reason or "")
    controller.run_pass()
    with sessions() as session:
        events = session.scalars(
            select(JobEventRow.to_state).where(JobEventRow.job_id == job.id)
        ).all()
    assert events.count("failed") == 1


def test_cancel_between_admission_and_launch_never_starts(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    marker = tmp_path / "ran"
    job = make_job(sessions, admin, clock(), argv=["touch", str(marker)])
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="controller", gpu_ids=[])
        cancel_job(session, actor=admin, job_id=job.id, now=clock())
    controller = make_controller(sessions, tmp_path, clock)
    [done] = settle(controller, sessions, admin, [job.id])
    assert done.state == JobState.CANCELLED and done.started_at is None
    assert not marker.exists()


def test_incremental_passes_admit_new_jobs_and_full_passes_the_old(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    holder = make_job(sessions, admin, clock(), argv=["sleep", "1"]).id
    controller.run_pass()
    big = make_job(sessions, admin, clock(), argv=["true"], cpus=2).id  # waits for the holder
    controller.run_pass()
    small = make_job(sessions, admin, clock(), argv=["true"]).id  # fits beside the holder
    controller.run_pass()  # nothing was freed: only the new job is looked at, and it fits
    with sessions() as session:
        assert session.get(JobRow, small).state in ("admitted", "running")  # type: ignore[union-attr]
        assert session.get(JobRow, big).state == "pending"  # type: ignore[union-attr]
    jobs = settle(controller, sessions, admin, [holder, big, small])
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3
    assert jobs[1].started_at is not None and jobs[1].started_at >= jobs[0].finished_at  # type: ignore[operator]


def test_every_finished_job_carries_its_metered_energy(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """The supervisor meters the job's GPU through the NVML interface (a fake counter at 100 W
    here: CI has no GPU) and its CPU and memory (estimated: no RAPL on this machine), samples it
    over its life, and the controller keeps the totals and the hours."""
    admin, _ = make_admin(sessions, clock())
    backend = LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(2, 4 * G),
        gpus=FakeInventory(2).detect(),
        kill_grace_seconds=0.5,
        gpu_energy="fake-counter:100",
        sample_every_s=0.2,
        estimates={"cpu_watts_per_core": 20.0},  # an operator's figure for its CPUs
    )
    controller = Controller(
        sessions=sessions, backend=backend, clock=clock, workdirs=tmp_path / "workdirs"
    )
    burn = "import time\nend = time.time() + 1\nwhile time.time() < end: pass"
    job = make_job(sessions, admin, clock(), gpus=1, argv=[sys.executable, "-c", burn])
    [done] = settle(controller, sessions, admin, [job.id])
    assert done.state == JobState.SUCCEEDED
    gpu, cpu, dram = done.energy["gpu"], done.energy["cpu"], done.energy["dram"]
    assert gpu.measured and gpu.method == "NVML energy counter"
    assert done.wall_s is not None and gpu.joules == pytest.approx(100 * done.wall_s, rel=0.3)
    assert not cpu.measured and cpu.joules == pytest.approx(20 * (done.cpu_s or 0), rel=0.01)
    assert cpu.method == "estimate: 20 W per busy core x its CPU-seconds"
    assert not dram.measured and dram.joules > 0
    samples = (tmp_path / "jobs").glob("*/energy.jsonl")
    assert len(next(samples).read_text().splitlines()) >= 4  # sampled on the way, not only ends
    with sessions() as session:
        hours = session.scalars(
            select(JobEnergyHourRow.joules).where(JobEnergyHourRow.job_id == job.id)
        ).all()
    total = gpu.joules + cpu.joules + dram.joules
    assert sum(hours) == pytest.approx(total)


@pytest.mark.parametrize("stop", ["cancel", "preempt"])
def test_a_launch_whose_handle_was_lost_is_stopped_not_left_running(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock, stop: str
) -> None:
    """Launched, then a crash before the handle was stored; then the job is cancelled or
    preempted before any pass re-adopted it. The running copy must be stopped, and the job
    end cancelled or go back to pending: never keep running unobserved (until this was fixed
    the restarted controller ended it as "cancelled before it started" while it ran on)."""
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock(), argv=["sleep", "30"], time_limit_s=600)
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="controller", gpu_ids=[])
    first = make_controller(sessions, tmp_path, clock)
    handle = first.backends["local"].submit(_spec_of(first, job.id))  # launched; the handle is lost
    wait_for(
        lambda: first.backends["local"].poll({job.id: handle})[job.id].phase.value == "running",
        what="the lost launch to run",
    )
    with sessions() as session, session.begin():
        if stop == "cancel":
            cancel_job(session, actor=admin, job_id=job.id, now=clock())
        else:
            row = session.get(JobRow, job.id)
            assert row is not None
            row.preempt_requested_at = clock()
    second = make_controller(sessions, tmp_path, clock)  # the restarted server
    second.run_pass()  # finds it admitted without a handle, asked to stop
    wait_for(
        lambda: first.backends["local"].poll({job.id: handle})[job.id].phase.value == "finished",
        what="the lost launch to be stopped",
    )
    if stop == "cancel":
        [done] = settle(second, sessions, admin, [job.id])
        assert done.state == JobState.CANCELLED
    else:

        def requeued() -> bool:
            second.run_pass()
            with sessions() as session:
                row = session.get(JobRow, job.id)
                return row is not None and row.preemptions == 1

        wait_for(requeued, what="the job to be requeued")
        with sessions() as session, session.begin():
            cancel_job(session, actor=admin, job_id=job.id, now=clock())  # before it runs again
        settle(second, sessions, admin, [job.id])
