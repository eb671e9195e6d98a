"""Usage and share reports, computed from the jobs' own timestamps.

- `usage`: GPU-hours, jobs and waits per pool, organisation, organisation kind or project, for a
  period. A job counts for the part of its run inside the period; its wait (submission to start)
  counts for the jobs that started in it.
- `shares`: what funders ask: for each pool, the GPU-hours it got against its guarantee, and how
  much of the time it had work waiting it also had at least its guaranteed GPUs, with the worst
  shortfall. Computed by sweeping the jobs' submit, start and end times.

Jobs without an allocation count under the pool "unallocated", as the engine has them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fabriek.core.errors import Forbidden, InvalidRequest
from fabriek.core.tenancy import UNALLOCATED
from fabriek.scheduling.engine import guarantees
from fabriek.scheduling.model import Pool
from fabriek.server.db.models import (
    AllocationRow,
    JobEnergyHourRow,
    JobRow,
    OrganisationRow,
    PoolRow,
    ProjectRow,
)
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import visible_jobs

GROUPS = ("pool", "organisation", "kind", "project", "factory")
NO_POOL = UNALLOCATED


@dataclass(frozen=True, slots=True)
class UsageRow:
    key: str
    gpu_hours: float
    jobs: int  # that ran in the period
    started: int  # that started in it
    mean_wait_s: float | None
    # Of the energy metered in the period (jobs that have ended): IT, at the facility's meter,
    # water, carbon (None: no job had a grid intensity).
    it_kwh: float = 0.0
    facility_kwh: float = 0.0
    water_l: float = 0.0
    carbon_kg: float | None = None


@dataclass(frozen=True, slots=True)
class ShareRow:
    pool: str
    guarantee: float
    guaranteed_gpu_hours: float
    delivered_gpu_hours: float
    demand_hours: float  # time with work waiting
    served_fraction: float | None  # of that time, with at least its guarantee running
    worst_shortfall_gpus: int


@dataclass(frozen=True, slots=True)
class _Job:
    id: int
    gpus: int
    pool: str
    organisation: str
    kind: str
    project: str
    submitted: float
    started: float | None
    ended: float | None
    factory: str = "factory"  # everything in one row


def _check_period(start: datetime, end: datetime) -> None:
    if end <= start:
        raise InvalidRequest("the period must end after it begins (--from before --to)")


def _jobs(session: Session, actor: Actor, start: datetime, end: datetime) -> list[_Job]:
    query = (
        select(
            JobRow.id,
            (JobRow.gpus * JobRow.nodes).label("gpus"),  # all its nodes' GPUs
            PoolRow.name,
            OrganisationRow.name,
            OrganisationRow.kind,
            ProjectRow.name,
            JobRow.submitted_at,
            JobRow.started_at,
            JobRow.finished_at,
        )
        .join(ProjectRow, ProjectRow.id == JobRow.project_id)
        .join(OrganisationRow, OrganisationRow.id == ProjectRow.organisation_id)
        .outerjoin(AllocationRow, AllocationRow.id == JobRow.allocation_id)
        .outerjoin(PoolRow, PoolRow.id == AllocationRow.pool_id)
        .where(JobRow.submitted_at < end)
        .where((JobRow.finished_at.is_(None)) | (JobRow.finished_at > start))
        .where(visible_jobs(actor))
    )
    return [
        _Job(
            job_id,
            gpus,
            pool or NO_POOL,
            org,
            kind,
            project,
            submitted.timestamp(),
            started.timestamp() if started else None,
            ended.timestamp() if ended else None,
        )
        for job_id, gpus, pool, org, kind, project, submitted, started, ended in session.execute(
            query
        )
    ]


def usage(
    session: Session, *, actor: Actor, by: str, start: datetime, end: datetime, now: datetime
) -> list[UsageRow]:
    """Per group: GPU-hours of the runs inside [start, end), jobs, and the mean wait to start."""
    if by not in GROUPS:
        raise InvalidRequest(f"usage is grouped by one of {', '.join(GROUPS)}, not {by!r}")
    _check_period(start, end)
    t0, t1, t_now = start.timestamp(), end.timestamp(), now.timestamp()
    gpu_s: dict[str, float] = defaultdict(float)
    ran: dict[str, int] = defaultdict(int)
    waits: dict[str, list[float]] = defaultdict(list)
    jobs = _jobs(session, actor, start, end)
    footprints = _footprints(session, [j.id for j in jobs], start, end)
    energy: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    carbon_known: set[str] = set()
    for job in jobs:
        key = getattr(job, by)
        if job.id in footprints:
            it_kwh, facility_kwh, water_l, carbon_kg = footprints[job.id]
            sums = energy[key]
            sums[0] += it_kwh
            sums[1] += facility_kwh
            sums[2] += water_l
            if carbon_kg is not None:
                sums[3] += carbon_kg
                carbon_known.add(key)
        if job.started is None:
            continue
        began, ended = max(job.started, t0), min(job.ended or t_now, t1)
        if ended > began:
            gpu_s[key] += job.gpus * (ended - began)
            ran[key] += 1
        if t0 <= job.started < t1:
            waits[key].append(job.started - job.submitted)
    # A preempted job's earlier run may fall in the period although its last start does not.
    keys = sorted(set(ran) | set(waits) | set(energy), key=lambda k: (-gpu_s.get(k, 0.0), k))
    return [
        UsageRow(
            key,
            gpu_s.get(key, 0.0) / 3600,
            ran.get(key, 0),
            len(waits.get(key, ())),
            sum(waits[key]) / len(waits[key]) if waits.get(key) else None,
            *energy[key][:3],
            energy[key][3] if key in carbon_known else None,
        )
        for key in keys
    ]


def _footprints(
    session: Session, job_ids: list[int], start: datetime, end: datetime
) -> dict[int, tuple[float, float, float, float | None]]:
    """Per job: (IT kWh, facility kWh, water L, carbon kg) of the part of its metered energy
    used within [start, end): its accounted footprint in proportion to that energy."""
    result: dict[int, tuple[float, float, float, float | None]] = {}
    for first in range(0, len(job_ids), 5000):
        ids = job_ids[first : first + 5000]
        in_period = dict(
            session.execute(
                select(JobEnergyHourRow.job_id, func.sum(JobEnergyHourRow.joules))
                .where(
                    JobEnergyHourRow.job_id.in_(ids),
                    JobEnergyHourRow.hour >= start,
                    JobEnergyHourRow.hour < end,
                )
                .group_by(JobEnergyHourRow.job_id)
            ).all()
        )
        if not in_period:
            continue
        for job_id, gpu, cpu, dram, facility_kwh, water, carbon in session.execute(
            select(
                JobRow.id,
                JobRow.gpu_energy_j,
                JobRow.cpu_energy_j,
                JobRow.dram_energy_j,
                JobRow.facility_kwh,
                JobRow.water_l,
                JobRow.carbon_kg,
            ).where(JobRow.id.in_(list(in_period)), JobRow.facility_kwh.is_not(None))
        ):
            total = (gpu or 0.0) + (cpu or 0.0) + (dram or 0.0)
            part = in_period[job_id] / total if total else 0.0
            result[job_id] = (
                in_period[job_id] / 3.6e6,
                facility_kwh * part,
                (water or 0.0) * part,
                None if carbon is None else carbon * part,
            )
    return result


def shares(
    session: Session,
    *,
    actor: Actor,
    start: datetime,
    end: datetime,
    now: datetime,
    total_gpus: int,
) -> list[ShareRow]:
    """The share report, for operators (it covers every tenant)."""
    if not actor.is_operator:
        raise Forbidden("only operators see the share report")
    _check_period(start, end)
    t0, t1, t_now = start.timestamp(), min(end, now).timestamp(), now.timestamp()
    pools = session.execute(select(PoolRow.name, PoolRow.guarantee).order_by(PoolRow.name)).all()
    owed_by_pool = guarantees([Pool(n, g) for n, g in pools], {"gpu": total_gpus})
    jobs = _jobs(session, actor, start, end)
    result = []
    for name, guarantee in pools:
        owed = owed_by_pool[name].get("gpu", 0)
        mine = [j for j in jobs if j.pool == name]
        delivered = sum(
            j.gpus * max(0.0, min(j.ended or t_now, t1) - max(j.started, t0))
            for j in mine
            if j.started is not None
        )
        demand_s, served_s, worst = _sweep(mine, t0, t1, t_now, owed)
        result.append(
            ShareRow(
                pool=name,
                guarantee=guarantee,
                guaranteed_gpu_hours=owed * max(0.0, t1 - t0) / 3600,
                delivered_gpu_hours=delivered / 3600,
                demand_hours=demand_s / 3600,
                served_fraction=served_s / demand_s if demand_s > 0 else None,
                worst_shortfall_gpus=worst,
            )
        )
    return result


def _sweep(
    jobs: list[_Job], t0: float, t1: float, now: float, owed: int
) -> tuple[float, float, int]:
    """Seconds with GPU work waiting, seconds of those with at least `owed` GPUs running (or all
    that was wanted), and the largest shortfall then."""
    changes: list[tuple[float, int, int]] = []  # time, change in running GPUs, in waiting GPUs
    for job in jobs:
        if job.gpus == 0:
            continue
        start_wait = job.submitted
        end_wait = job.started if job.started is not None else (job.ended or now)
        changes += [(start_wait, 0, job.gpus), (end_wait, 0, -job.gpus)]
        if job.started is not None:
            changes += [(job.started, job.gpus, 0), (job.ended or now, -job.gpus, 0)]
    changes.sort()
    running = waiting = 0
    demand = served = 0.0
    worst = 0
    last = t0
    for at, d_run, d_wait in [*changes, (t1, 0, 0)]:
        at_clipped = min(max(at, t0), t1)
        if at_clipped > last and waiting > 0:
            span = at_clipped - last
            demand += span
            want = min(owed, running + waiting)
            if running >= want:
                served += span
            else:
                worst = max(worst, want - running)
        last = max(last, at_clipped)
        running += d_run
        waiting += d_wait
    return demand, served, worst
