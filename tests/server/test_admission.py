"""The pool-aware engine in the live controller, with real processes, on both databases: reclaim
by preemption (SIGTERM, grace, requeue keeping the place), estimated starts, backfill between
passes, and the reasons a user reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Forbidden, InvalidRequest
from fabriek.core.jobs import JobState
from fabriek.server.controller import loop
from fabriek.server.controller.loop import Controller
from fabriek.server.controller.snapshot import UNALLOCATED
from fabriek.server.db.models import AuditEventRow, JobEventRow, JobRow
from fabriek.server.services import allocations
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import cancel_job, get_job, submit_job
from tests.conftest import FrozenClock
from tests.helpers import wait_for
from tests.server.factories import PARTITIONS, make_admin, make_job, make_request
from tests.server.test_allocations import _tenant
from tests.server.test_controller import make_controller, settle


def _vision_with_allocation(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> tuple[Actor, Actor, int]:
    """An operator, and alice in project vision of the verified Groningen university with 100
    GPU-hours in pool regional (which the seeded shares give 1 of the 2 GPUs)."""
    admin, alice = _tenant(sessions, clock)
    with sessions() as session, session.begin():
        granted = allocations.grant(
            session,
            actor=admin,
            project="vision",
            pool="regional",
            gpu_hours=100.0,
            days=30,
            now=clock(),
        )
    return admin, alice, granted.id


def _submit(
    sessions: sessionmaker[Session], actor: Actor, clock: FrozenClock, **kwargs: object
) -> int:
    allocation = kwargs.pop("allocation", None)
    priority = kwargs.pop("priority", 0)
    request = replace(
        make_request(**kwargs),  # type: ignore[arg-type]
        allocation_id=allocation,
        priority=priority,
    )
    with sessions() as session, session.begin():
        return submit_job(
            session, actor=actor, request=request, partitions=PARTITIONS, now=clock()
        ).id


def _until(
    controller: Controller, sessions: sessionmaker[Session], job_id: int, state: str = "running"
) -> None:
    """Run passes (as the loop would) until the job is in `state`."""

    def reached() -> bool:
        controller.run_pass()
        return _row(sessions, job_id).state == state

    wait_for(reached, what=f"job {job_id} to be {state}")


def _admitted_order(sessions: sessionmaker[Session]) -> list[int]:
    """Job ids in the order they were admitted."""
    with sessions() as session:
        return list(
            session.scalars(
                select(JobEventRow.job_id)
                .where(JobEventRow.to_state == "admitted")
                .order_by(JobEventRow.id)
            )
        )


def _row(sessions: sessionmaker[Session], job_id: int) -> JobRow:
    with sessions() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        session.expunge(row)
        return row


def test_a_pool_reclaims_its_guarantee_from_borrowed_work(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, alice, allocation = _vision_with_allocation(sessions, clock)
    # Unsandboxed: its "checkpoint" lies outside its run's directories, where its second run
    # finds it; a sandboxed run sees only its own (persistent project storage comes with
    # datasets). SIGTERM and the grace period in the sandbox: tests/backends/local.
    controller = make_controller(sessions, tmp_path, clock, sandbox=False)
    stopped = tmp_path / "got-sigterm"
    # Without an allocation it borrows both GPUs. Asked to stop, it saves a "checkpoint" in the
    # grace period; its second run finds it and finishes.
    borrower = make_job(
        sessions,
        admin,
        clock(),
        gpus=2,
        time_limit_s=600,
        argv=[
            "sh",
            "-c",
            f'if [ -e {stopped} ]; then echo resumed; exit 0; fi; trap "touch {stopped}; exit 143" '
            "TERM; sleep 30 & wait",
        ],
    ).id

    _until(controller, sessions, borrower)
    first = _row(sessions, borrower)
    assert first.borrowed and first.preemptible and first.gpu_ids == [0, 1]

    owner = _submit(
        sessions, alice, clock, project="vision", gpus=1, allocation=allocation,
        argv=["sleep", "0.5"], time_limit_s=600,
    )  # fmt: skip
    controller.run_pass()
    asked = _row(sessions, borrower)
    assert asked.preempt_requested_at is not None
    assert asked.reason == "preempted: pool regional reclaims its guaranteed GPUs"
    waiting = _row(sessions, owner)
    assert waiting.state == JobState.PENDING.value
    assert "reclaiming its guaranteed" in (waiting.reason or "")

    _until(controller, sessions, owner)  # on the reclaimed GPU
    assert stopped.exists()  # SIGTERM came first, and the job had its grace period
    requeued = _row(sessions, borrower)
    assert requeued.state == JobState.PENDING.value and requeued.preemptions == 1
    assert requeued.submitted_at == first.submitted_at  # its place in the queue
    assert requeued.handle is None and requeued.preempt_requested_at is None

    done = settle(controller, sessions, admin, [owner, borrower])
    assert [j.state for j in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    owner_job, borrower_job = done
    assert [e.to_state.value for e in borrower_job.events] == [
        "pending", "admitted", "running", "preempted", "pending", "admitted", "running",
        "succeeded",
    ]  # fmt: skip
    preempted = borrower_job.events[3]
    assert preempted.actor == "controller" and "reclaims" in (preempted.reason or "")
    # It came back only after the owner ended: both GPUs were needed, one was the owner's.
    with sessions() as session:
        order = session.execute(
            select(JobEventRow.job_id, JobEventRow.to_state).order_by(JobEventRow.id)
        ).all()
    assert order.index((owner, "succeeded")) < order.index((borrower, "admitted"), 3)
    assert borrower_job.preemptions == 1
    with sessions() as session:
        audited = session.scalars(
            select(AuditEventRow.target_id).where(AuditEventRow.action == "job.preempt")
        ).all()
    assert audited == [str(borrower)]
    # The owner paid for its own run only; the borrower has no allocation to charge.
    assert owner_job.charged_gpu_hours is not None and owner_job.charged_gpu_hours < 0.01


def test_work_within_its_guarantee_is_never_preempted(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, alice, allocation = _vision_with_allocation(sessions, clock)
    controller = make_controller(sessions, tmp_path, clock)
    # Not preemptible, within regional's one guaranteed GPU.
    mine = _submit(
        sessions, alice, clock, project="vision", gpus=1, allocation=allocation,
        argv=["sleep", "30"], time_limit_s=600,
    )  # fmt: skip
    _until(controller, sessions, mine)
    second = _submit(
        sessions, alice, clock, project="vision", gpus=1, allocation=allocation,
        argv=["true"], time_limit_s=600,
    )  # fmt: skip
    for _ in range(3):
        controller.run_pass()
    row = _row(sessions, second)
    assert row.state == JobState.PENDING.value
    # Beyond its guarantee, and not preemptible: it may not borrow the idle GPU.
    assert row.reason == (
        "waiting: pool regional uses 1 of its 1 guaranteed fake-gpu GPUs; only preemptible "
        "jobs may borrow beyond it"
    )
    assert _row(sessions, mine).preempt_requested_at is None
    with sessions() as session, session.begin():
        cancel_job(session, actor=alice, job_id=mine, now=clock())
        cancel_job(session, actor=alice, job_id=second, now=clock())
    settle(controller, sessions, admin, [mine, second])


def test_the_first_waiting_job_gets_an_estimated_start_and_later_ones_backfill(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller = make_controller(sessions, tmp_path, clock)
    # Both GPUs for up to 10 minutes (the clock is frozen: "now" stays put while it runs).
    hog = make_job(sessions, admin, clock(), gpus=2, argv=["sleep", "30"], time_limit_s=600).id
    _until(controller, sessions, hog)
    head = make_job(sessions, admin, clock(), gpus=1, argv=["true"], time_limit_s=60).id
    controller.run_pass()  # an incremental pass: nothing was freed since the last full one
    row = _row(sessions, head)
    assert row.estimated_start_at == _row(sessions, hog).admitted_at + timedelta(seconds=600)
    assert row.reason == "waiting for 1 fake-gpu GPUs on 1 node to free up"
    # A CPU job cannot delay the head (it needs no GPU): it starts now, past the head.
    cpu = make_job(sessions, admin, clock(), cpus=1, gpus=0, argv=["true"]).id
    controller.run_pass()
    assert _row(sessions, cpu).state in ("admitted", "running", "succeeded")
    # A GPU job behind the head waits behind it, whatever pass looks at it.
    behind = make_job(sessions, admin, clock(), gpus=1, argv=["true"], time_limit_s=60).id
    controller.run_pass()
    later = _row(sessions, behind)
    assert later.state == "pending" and later.reason == (
        f"waiting behind job {head}, first in pool unallocated's queue"
    )
    assert later.estimated_start_at is None
    with sessions() as session:
        shown = get_job(session, actor=admin, job_id=behind)
    assert shown.queue_position == 1 and shown.pool is None  # one older job waits in its pool
    with sessions() as session, session.begin():
        cancel_job(session, actor=admin, job_id=hog, now=clock())
    done = settle(controller, sessions, admin, [hog, head, cpu, behind])
    assert [j.state for j in done] == [JobState.CANCELLED] + [JobState.SUCCEEDED] * 3
    assert all(j.estimated_start_at is None for j in done)  # cleared once admitted


def test_a_pending_job_on_an_ended_allocation_says_so(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    _, alice, allocation = _vision_with_allocation(sessions, clock)
    controller = make_controller(sessions, tmp_path, clock)
    job = _submit(
        sessions, alice, clock, project="vision", gpus=1, allocation=allocation, argv=["true"]
    )
    clock.advance(31 * 86400)
    controller.run_pass()
    row = _row(sessions, job)
    assert row.state == "pending"
    assert (row.reason or "").startswith(f"waiting: allocation {allocation} ended on ")


def test_priority_orders_a_projects_jobs_and_only_operators_raise_it(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, alice, _ = _vision_with_allocation(sessions, clock)
    controller = make_controller(sessions, tmp_path, clock)
    hog = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["sleep", "30"])
    _until(controller, sessions, hog)
    low = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["true"], priority=-5)
    normal = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["true"])
    controller.run_pass()
    assert (
        _row(sessions, low).reason
        == f"waiting behind job {normal}, first in pool {UNALLOCATED}'s queue"
    )
    with pytest.raises(Forbidden, match="only operators raise"):
        _submit(sessions, alice, clock, project="vision", argv=["true"], priority=1)
    with pytest.raises(InvalidRequest, match="from -1000 to 1000"):
        _submit(sessions, admin, clock, project="vision", argv=["true"], priority=1001)
    with sessions() as session, session.begin():
        cancel_job(session, actor=alice, job_id=hog, now=clock())
    done = settle(controller, sessions, admin, [hog, low, normal])
    assert done[2].started_at is not None and done[1].started_at is not None
    assert _admitted_order(sessions) == [hog, normal, low]


def test_a_job_waiting_past_the_starvation_limit_goes_first(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The controller passes its setting (FABRIEK_STARVING_AFTER_SECONDS) to the engine: a
    low-priority job that has waited past it goes before a newer normal one. (A job crossing
    the limit is seen by the next full pass, at most FULL_PASS_EVERY seconds later: every pass
    is full here.)"""
    monkeypatch.setattr(loop, "FULL_PASS_EVERY", 0.0)
    admin, alice, _ = _vision_with_allocation(sessions, clock)
    controller = make_controller(sessions, tmp_path, clock)
    controller.starving_after_s = 600.0
    hog = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["sleep", "30"])
    _until(controller, sessions, hog)
    low = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["true"], priority=-5)
    clock.advance(300)
    normal = _submit(sessions, alice, clock, project="vision", cpus=2, argv=["true"])
    controller.run_pass()
    assert _row(sessions, low).reason == (
        f"waiting behind job {normal}, first in pool {UNALLOCATED}'s queue"
    )  # priority orders while neither starves
    clock.advance(400)  # low has waited 700 s
    controller.run_pass()
    assert _row(sessions, normal).reason == (
        f"waiting behind job {low}, first in pool {UNALLOCATED}'s queue"
    )
    with sessions() as session, session.begin():
        cancel_job(session, actor=alice, job_id=hog, now=clock())
    settle(controller, sessions, admin, [hog, low, normal])
    assert _admitted_order(sessions) == [hog, low, normal]
