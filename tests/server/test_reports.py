"""Usage and share reports on both databases, from jobs with known times."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Forbidden, InvalidRequest
from fabriek.core.jobs import JobState
from fabriek.core.tenancy import OrgKind
from fabriek.server.db.models import JobRow
from fabriek.server.services import allocations, reports, tenancy
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import submit_job
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.server.factories import PARTITIONS, make_admin, make_request, make_user

H = 3600.0


def _job(
    sessions: sessionmaker[Session],
    actor: Actor,
    at: datetime,
    *,
    project: str,
    gpus: int,
    allocation: int | None,
    start: datetime | None,
    end: datetime | None,
    preemptible: bool = False,
) -> int:
    request = replace(
        make_request(project=project, gpus=gpus, time_limit_s=int(6 * H)),
        allocation_id=allocation,
        preemptible=preemptible,
    )
    with sessions() as session, session.begin():
        job_id = submit_job(session, actor=actor, request=request, partitions=PARTITIONS, now=at).id
    if start is not None:
        with sessions() as session, session.begin():
            row = session.get(JobRow, job_id)
            assert row is not None
            transition_job(session, row, JobState.ADMITTED, at=start, actor="t")
            transition_job(session, row, JobState.RUNNING, at=start, actor="t")
            if end is not None:
                wall = (end - start).total_seconds()
                transition_job(session, row, JobState.SUCCEEDED, at=end, actor="t", wall_s=wall)
    return job_id


@pytest.fixture
def history(sessions: sessionmaker[Session], clock: FrozenClock) -> dict[str, object]:
    """From t0: a regional job of 2 GPUs waits 1 h and runs 2 h; a regional job of 1 GPU waits
    from t0+1h to t0+2h and still runs at t0+4h; the operator's job without an allocation runs
    1 GPU from t0 to t0+1h."""
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    bob = make_user(sessions, "bob", clock())
    with sessions() as session, session.begin():
        tenancy.create_organisation(
            session,
            actor=alice,
            name="rug",
            display_name="RUG",
            kind=OrgKind.UNIVERSITY,
            country="NL",
            region="NL11",
            now=clock(),
        )
        tenancy.verify_organisation(session, actor=admin, name="rug", verified=True, now=clock())
        tenancy.create_project(session, actor=alice, name="vision", organisation="rug", now=clock())
        grant = allocations.grant(
            session,
            actor=admin,
            project="vision",
            pool="regional",
            gpu_hours=100,
            days=30,
            now=clock(),
        )
    t0 = clock()
    h = timedelta(hours=1)
    _job(
        sessions,
        alice,
        t0,
        project="vision",
        gpus=2,
        allocation=grant.id,
        start=t0 + h,
        end=t0 + 3 * h,
        # More than the regional pool's whole guarantee on PARTITIONS (1 GPU): only a preemptible
        # job may ask for that, or it could never start (and is refused, issue 21 item 10).
        preemptible=True,
    )
    _job(
        sessions,
        alice,
        t0 + h,
        project="vision",
        gpus=1,
        allocation=grant.id,
        start=t0 + 2 * h,
        end=None,
    )
    _job(sessions, admin, t0, project="default", gpus=1, allocation=None, start=t0, end=t0 + h)
    return {"admin": admin, "alice": alice, "bob": bob, "t0": t0}


def _usage(sessions, actor, by, start, end, now):  # type: ignore[no-untyped-def]
    with sessions() as session:
        return {
            r.key: (round(r.gpu_hours, 6), r.jobs, r.started, r.mean_wait_s)
            for r in reports.usage(session, actor=actor, by=by, start=start, end=end, now=now)
        }


def test_usage_by_pool_project_and_kind(
    sessions: sessionmaker[Session], history: dict[str, object]
) -> None:
    t0 = history["t0"]
    assert isinstance(t0, datetime)
    now, h = t0 + timedelta(hours=4), timedelta(hours=1)
    admin = history["admin"]
    assert _usage(sessions, admin, "pool", t0, now, now) == {
        "regional": (6.0, 2, 2, H),
        "unallocated": (1.0, 1, 1, 0.0),
    }
    assert _usage(sessions, admin, "kind", t0, now, now) == {
        "university": (6.0, 2, 2, H),
        "other": (1.0, 1, 1, 0.0),
    }
    # Only the part of the runs inside the period counts; waits only of jobs started in it.
    assert _usage(sessions, admin, "project", t0 + 2 * h, now, now) == {
        "vision": (4.0, 2, 1, H),
    }
    # Each user sees only what they may see.
    assert set(_usage(sessions, history["alice"], "project", t0, now, now)) == {"vision"}
    assert _usage(sessions, history["bob"], "project", t0, now, now) == {}


def test_share_report_delivered_served_and_worst_shortfall(
    sessions: sessionmaker[Session], history: dict[str, object]
) -> None:
    t0 = history["t0"]
    assert isinstance(t0, datetime)
    now = t0 + timedelta(hours=4)
    with sessions() as session:
        rows = {
            r.pool: r
            for r in reports.shares(
                session,
                actor=history["admin"],
                start=t0,
                end=now,
                now=now,
                total_gpus=8,  # type: ignore[arg-type]
            )
        }
    regional = rows["regional"]
    # Owed 2 of 8 GPUs. The first hour it waited with nothing running (short by 2); the second,
    # 2 GPUs ran while 1 more waited (served); then nothing waited.
    assert regional.guaranteed_gpu_hours == pytest.approx(8.0)
    assert regional.delivered_gpu_hours == pytest.approx(6.0)
    assert regional.demand_hours == pytest.approx(2.0)
    assert regional.served_fraction == pytest.approx(0.5)
    assert regional.worst_shortfall_gpus == 2
    assert rows["eurohpc"].demand_hours == 0 and rows["eurohpc"].served_fraction is None


def test_reports_refuse_bad_periods_groups_and_non_operators(
    sessions: sessionmaker[Session], history: dict[str, object]
) -> None:
    t0 = history["t0"]
    assert isinstance(t0, datetime)
    with sessions() as session:
        with pytest.raises(InvalidRequest, match="must end after it begins"):
            reports.usage(session, actor=history["admin"], by="pool", start=t0, end=t0, now=t0)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="grouped by one of"):
            reports.usage(
                session,
                actor=history["admin"],
                by="colour",
                start=t0,
                end=t0 + timedelta(1),
                now=t0,  # type: ignore[arg-type]
            )
        with pytest.raises(Forbidden, match="only operators"):
            reports.shares(
                session,
                actor=history["alice"],
                start=t0,
                end=t0 + timedelta(1),
                now=t0,
                total_gpus=8,  # type: ignore[arg-type]
            )
