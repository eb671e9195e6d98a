"""Allocations: a project's budget of GPU-hours in a pool for a period, and charging against it.

A job submitted against an allocation **holds** what it may use at most (GPUs x time limit, in
GPU-hours) from the moment it is accepted, so that no number of concurrent submissions can
promise more than the budget: the allocation's row is locked while the hold is taken. When the
job ends, whatever way, the hold is released and what it really used (GPUs x wall time) is
**charged**. New jobs may ask for at most `gpu_hours - held - charged`.

Operators grant allocations directly for now; access calls and applications will grant them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from fabriek.core.errors import (
    AllocationExhausted,
    AllocationExpired,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
)
from fabriek.server.db.models import (
    AllocationRow,
    JobRow,
    OrganisationRow,
    PoolRow,
    ProjectRow,
)
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor
from fabriek.server.services.pools import get_pool
from fabriek.server.services.tenancy import get_organisation, visible_project_ids

MAX_DAYS = 3 * 366


@dataclass(frozen=True, slots=True)
class Allocation:
    id: int
    project: str
    pool: str
    gpu_hours: float
    held_gpu_hours: float
    charged_gpu_hours: float
    starts_at: datetime
    ends_at: datetime
    granted_by: str
    note: str | None

    @property
    def left_gpu_hours(self) -> float:
        return self.gpu_hours - self.held_gpu_hours - self.charged_gpu_hours


def _to_allocation(row: AllocationRow, project: str, pool: str) -> Allocation:
    return Allocation(
        row.id,
        project,
        pool,
        row.gpu_hours,
        row.held_gpu_hours,
        row.charged_gpu_hours,
        row.starts_at,
        row.ends_at,
        row.granted_by,
        row.note,
    )


def gpu_hours_of(gpus: int, seconds: float) -> float:
    return gpus * seconds / 3600.0


def grant(
    session: Session,
    *,
    actor: Actor,
    project: str,
    pool: str,
    gpu_hours: float,
    days: int,
    starts_at: datetime | None = None,
    note: str | None = None,
    now: datetime,
) -> Allocation:
    """Operators: give `project` `gpu_hours` in `pool` for `days` days from `starts_at` (now).
    The project's organisation must be eligible for the pool."""
    if not actor.is_operator:
        raise Forbidden("only operators grant allocations")
    if not gpu_hours > 0:
        raise InvalidRequest("an allocation grants more than 0 GPU-hours")
    if not 1 <= days <= MAX_DAYS:
        raise InvalidRequest(f"an allocation lasts 1 to {MAX_DAYS} days, not {days}")
    found = session.execute(
        select(ProjectRow.id, OrganisationRow.name)
        .join(OrganisationRow, OrganisationRow.id == ProjectRow.organisation_id)
        .where(ProjectRow.name == project)
    ).first()
    if found is None:
        raise NotFound(f"no project named {project!r}")
    project_id, org_handle = found
    pool_info = get_pool(session, name=pool)
    why_not = pool_info.eligibility.check(get_organisation(session, actor=actor, name=org_handle))
    if why_not:
        raise Conflict(f"project {project!r} may not get GPU-hours in pool {pool!r}: {why_not}")
    pool_id = session.scalar(select(PoolRow.id).where(PoolRow.name == pool))
    assert pool_id is not None
    row = create(
        session,
        project_id=project_id,
        pool_id=pool_id,
        gpu_hours=gpu_hours,
        starts_at=starts_at or now,
        days=days,
        granted_by=actor.name,
        note=note,
        now=now,
    )
    audit.record(
        session,
        actor=actor,
        action="allocation.grant",
        target_type="allocation",
        target_id=row.id,
        at=now,
        project=project,
        organisation=org_handle,
        pool=pool,
        gpu_hours=float(gpu_hours),
        starts_at=row.starts_at.isoformat(),
        ends_at=row.ends_at.isoformat(),
    )
    return _to_allocation(row, project, pool)


def create(
    session: Session,
    *,
    project_id: int,
    pool_id: int,
    gpu_hours: float,
    starts_at: datetime,
    days: int,
    granted_by: str,
    note: str | None,
    now: datetime,
) -> AllocationRow:
    """The row of a new allocation (callers check who may, and write the audit event)."""
    row = AllocationRow(
        project_id=project_id,
        pool_id=pool_id,
        gpu_hours=float(gpu_hours),
        held_gpu_hours=0.0,
        charged_gpu_hours=0.0,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(days=days),
        granted_by=granted_by,
        note=note,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def _query(actor: Actor):  # type: ignore[no-untyped-def]
    query = (
        select(AllocationRow, ProjectRow.name, PoolRow.name)
        .join(ProjectRow, ProjectRow.id == AllocationRow.project_id)
        .join(PoolRow, PoolRow.id == AllocationRow.pool_id)
    )
    if not actor.is_operator:
        query = query.where(AllocationRow.project_id.in_(visible_project_ids(actor)))
    return query


def list_allocations(
    session: Session, *, actor: Actor, project: str | None = None
) -> list[Allocation]:
    """The allocations of the projects the actor sees (all for an operator)."""
    query = _query(actor).order_by(AllocationRow.id)
    if project is not None:
        query = query.where(ProjectRow.name == project)
    return [_to_allocation(r, p, pool) for r, p, pool in session.execute(query)]


def get_allocation(session: Session, *, actor: Actor, allocation_id: int) -> Allocation:
    found = session.execute(_query(actor).where(AllocationRow.id == allocation_id)).first()
    if found is None:
        raise NotFound(f"no allocation {allocation_id}")
    return _to_allocation(*found)


def hold(
    session: Session,
    *,
    allocation_id: int,
    project_id: int,
    project: str,
    gpus: int,
    time_limit_s: int,
    now: datetime,
) -> float:
    """Take what a new job may use from the allocation, or refuse with the reason. The row is
    locked until the submission commits, so concurrent submissions cannot overdraw it."""
    row = session.scalar(
        select(AllocationRow)
        .where(AllocationRow.id == allocation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None or row.project_id != project_id:
        raise NotFound(f"no allocation {allocation_id} in project {project!r}")
    if now < row.starts_at:
        raise AllocationExpired(
            f"allocation {allocation_id} begins on {row.starts_at:%Y-%m-%d %H:%M} UTC"
        )
    if now >= row.ends_at:
        raise AllocationExpired(f"allocation {allocation_id} ended on {row.ends_at:%Y-%m-%d} UTC")
    need = gpu_hours_of(gpus, time_limit_s)
    left = row.gpu_hours - row.held_gpu_hours - row.charged_gpu_hours
    if need > left + 1e-9:
        raise AllocationExhausted(
            f"allocation {allocation_id} has {_hours(max(left, 0.0))} GPU-hours left and this job "
            f"may use {_hours(need)} ({gpus} GPUs for {time_limit_s / 3600:.2f} h); ask for a "
            "shorter time limit, or wait for running jobs to end"
        )
    row.held_gpu_hours += need
    return need


def _hours(value: float) -> str:
    """GPU-hours to read: 1,234.50 or 0.997 (small amounts keep a third decimal)."""
    return f"{value:,.2f}" if value >= 10 else f"{value:.3f}"


def settle(session: Session, job: JobRow) -> None:
    """The job has ended: release its hold and charge what it used (GPUs x wall time, never more
    than it held). Called by the job transition function on every final state."""
    if job.allocation_id is None or job.hold_gpu_hours is None or job.charged_gpu_hours is not None:
        return
    row = session.scalar(
        select(AllocationRow)
        .where(AllocationRow.id == job.allocation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    used = min(gpu_hours_of(job.gpus * (job.nodes or 1), job.wall_s or 0.0), job.hold_gpu_hours)
    job.charged_gpu_hours = used
    if row is not None:
        row.held_gpu_hours = max(0.0, row.held_gpu_hours - job.hold_gpu_hours)
        row.charged_gpu_hours += used
