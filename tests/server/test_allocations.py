"""Allocations on both databases: grants, holds on submission, charges when jobs end, and no
overdraw under concurrent submissions."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import (
    AllocationExhausted,
    AllocationExpired,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from fabriek.core.jobs import JobState
from fabriek.core.tenancy import OrgKind
from fabriek.server.db.models import AuditEventRow, JobRow
from fabriek.server.services import allocations, tenancy
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import cancel_job, submit_job
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.server.factories import PARTITIONS, make_admin, make_request, make_user


def _tenant(
    sessions: sessionmaker[Session], clock: FrozenClock, *, verified: bool = True
) -> tuple[Actor, Actor]:
    """An operator, and alice: owner of the verified Groningen organisation rug and manager of
    its project vision."""
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    with sessions() as session, session.begin():
        tenancy.create_organisation(
            session,
            actor=alice,
            name="rug",
            display_name="University of Groningen",
            kind=OrgKind.UNIVERSITY,
            country="NL",
            region="NL11",
            now=clock(),
        )
        if verified:
            tenancy.verify_organisation(
                session, actor=admin, name="rug", verified=True, now=clock()
            )
        tenancy.create_project(session, actor=alice, name="vision", organisation="rug", now=clock())
    return admin, alice


def _grant(
    sessions: sessionmaker[Session], admin: Actor, clock: FrozenClock, gpu_hours: float = 10.0
) -> allocations.Allocation:
    with sessions() as session, session.begin():
        return allocations.grant(
            session,
            actor=admin,
            project="vision",
            pool="regional",
            gpu_hours=gpu_hours,
            days=30,
            now=clock(),
        )


def _submit(
    sessions: sessionmaker[Session],
    actor: Actor,
    clock: FrozenClock,
    allocation: int | None,
    *,
    gpus: int = 1,
    hours: float = 1.0,
    preemptible: bool = False,
) -> int:
    request = replace(
        make_request(project="vision", gpus=gpus, time_limit_s=int(hours * 3600)),
        allocation_id=allocation,
        preemptible=preemptible,
    )
    with sessions() as session, session.begin():
        return submit_job(
            session, actor=actor, request=request, partitions=PARTITIONS, now=clock()
        ).id


def _left(sessions: sessionmaker[Session], actor: Actor, allocation_id: int) -> float:
    with sessions() as session:
        return allocations.get_allocation(
            session, actor=actor, allocation_id=allocation_id
        ).left_gpu_hours


def test_operators_grant_to_eligible_projects_only(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, alice = _tenant(sessions, clock, verified=False)
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden, match="only operators"):
            allocations.grant(
                session,
                actor=alice,
                project="vision",
                pool="commercial",
                gpu_hours=5,
                days=30,
                now=clock(),
            )
        with pytest.raises(Conflict, match="not verified by an operator"):
            allocations.grant(
                session,
                actor=admin,
                project="vision",
                pool="regional",
                gpu_hours=5,
                days=30,
                now=clock(),
            )
        with pytest.raises(InvalidRequest, match="more than 0 GPU-hours"):
            allocations.grant(
                session,
                actor=admin,
                project="vision",
                pool="commercial",
                gpu_hours=0,
                days=30,
                now=clock(),
            )
        with pytest.raises(NotFound, match="no project named 'nope'"):
            allocations.grant(
                session,
                actor=admin,
                project="nope",
                pool="commercial",
                gpu_hours=5,
                days=30,
                now=clock(),
            )
        granted = allocations.grant(
            session,
            actor=admin,
            project="vision",
            pool="commercial",
            gpu_hours=5,
            days=30,
            now=clock(),
        )
    assert granted.ends_at == clock() + timedelta(days=30) and granted.left_gpu_hours == 5
    bob = make_user(sessions, "bob", clock())
    with sessions() as session:
        actions = session.scalars(select(AuditEventRow.action)).all()
        assert actions.count("allocation.grant") == 1
        # The project's manager sees it; someone of another organisation does not.
        assert [a.id for a in allocations.list_allocations(session, actor=alice)] == [granted.id]
        assert allocations.list_allocations(session, actor=bob) == []
        with pytest.raises(NotFound):
            allocations.get_allocation(session, actor=bob, allocation_id=granted.id)


def test_a_job_holds_its_most_and_is_charged_what_it_used(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, alice = _tenant(sessions, clock)
    grant = _grant(sessions, admin, clock, gpu_hours=10)
    # 2 GPUs: beyond regional's guarantee of 1 (of 2), so it must be preemptible to be accepted.
    job_id = _submit(sessions, alice, clock, grant.id, gpus=2, hours=2, preemptible=True)  # holds 4
    assert _left(sessions, alice, grant.id) == pytest.approx(6)
    with sessions() as session, session.begin():
        row = session.get(JobRow, job_id)
        assert row is not None and row.hold_gpu_hours == pytest.approx(4)
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="t")
        transition_job(session, row, JobState.RUNNING, at=clock(), actor="t")
        clock.advance(1800)
        transition_job(session, row, JobState.SUCCEEDED, at=clock(), actor="t", wall_s=1800.0)
    with sessions() as session:
        a = allocations.get_allocation(session, actor=alice, allocation_id=grant.id)
        row = session.get(JobRow, job_id)
        assert row is not None and row.charged_gpu_hours == pytest.approx(1.0)  # 2 GPUs x 0.5 h
    assert (a.held_gpu_hours, a.charged_gpu_hours, a.left_gpu_hours) == pytest.approx((0, 1, 9))


def test_cancelling_a_waiting_job_releases_its_hold(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, alice = _tenant(sessions, clock)
    grant = _grant(sessions, admin, clock, gpu_hours=3)
    job_id = _submit(sessions, alice, clock, grant.id, gpus=1, hours=3)
    assert _left(sessions, alice, grant.id) == pytest.approx(0)
    with sessions() as session, session.begin():
        cancel_job(session, actor=alice, job_id=job_id, now=clock())
    assert _left(sessions, alice, grant.id) == pytest.approx(3)


def test_exhausted_expired_and_foreign_allocations_refuse_and_write_nothing(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, alice = _tenant(sessions, clock)
    grant = _grant(sessions, admin, clock, gpu_hours=2)
    _submit(sessions, alice, clock, grant.id, gpus=1, hours=1.5)
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(JobRow))
    with pytest.raises(
        AllocationExhausted, match=re.escape("0.500 GPU-hours left and this job may use 1.000")
    ):
        _submit(sessions, alice, clock, grant.id, gpus=1, hours=1)
    with pytest.raises(NotFound, match="no allocation 999 in project 'vision'"):
        _submit(sessions, alice, clock, 999)
    clock.advance(31 * 86400)
    with pytest.raises(AllocationExpired, match="ended on"):
        _submit(sessions, alice, clock, grant.id, gpus=0, hours=0.1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == before
    assert _left(sessions, alice, grant.id) == pytest.approx(0.5)


def test_concurrent_submissions_never_overdraw(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    """100 submissions at once against a budget for 10 one-GPU-hour jobs: exactly 10 get in."""
    admin, alice = _tenant(sessions, clock)
    grant = _grant(sessions, admin, clock, gpu_hours=10)
    accepted, refused, other = [], [], []
    start = threading.Barrier(20)

    def submit_some(n: int) -> None:
        start.wait()
        for _ in range(n):
            try:
                accepted.append(_submit(sessions, alice, clock, grant.id, gpus=1, hours=1))
            except AllocationExhausted:
                refused.append(1)
            except Exception as exc:  # anything else is a failure of the test
                other.append(exc)

    threads = [threading.Thread(target=submit_some, args=(5,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert other == []
    assert len(accepted) == 10 and len(refused) == 90
    with sessions() as session:
        a = allocations.get_allocation(session, actor=alice, allocation_id=grant.id)
        holds = session.scalar(
            select(func.sum(JobRow.hold_gpu_hours)).where(JobRow.allocation_id == grant.id)
        )
    assert a.held_gpu_hours == pytest.approx(10) and holds == pytest.approx(10)
    assert a.left_gpu_hours == pytest.approx(0)


def test_a_factory_may_require_an_allocation_for_gpu_jobs(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, alice = _tenant(sessions, clock)
    grant = _grant(sessions, admin, clock)

    def submit(gpus: int, allocation: int | None) -> int:
        request = replace(make_request(project="vision", gpus=gpus), allocation_id=allocation)
        with sessions() as session, session.begin():
            return submit_job(
                session,
                actor=alice,
                request=request,
                partitions=PARTITIONS,
                now=clock(),
                require_allocation=True,
            ).id

    with pytest.raises(InvalidRequest, match="charged to an allocation: add --allocation"):
        submit(1, None)
    assert submit(0, None) > 0  # CPU work needs none
    assert submit(1, grant.id) > 0
