"""Usage by pool, organisation, kind or project; the share report funders ask for."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from fabriek.server.schemas import ShareOut, UsageReportOut
from fabriek.server.schemas.types import Timestamp
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import reports as service

router = APIRouter(tags=["reports"])

From = Annotated[
    Timestamp, Query(alias="from", description="Start of the period (ISO 8601, with a zone).")
]
To = Annotated[
    Timestamp, Query(alias="to", description="End of the period (ISO 8601, with a zone).")
]


@router.get("/usage", response_model=list[UsageReportOut])
def usage(
    actor: ActorDep,
    runtime: RuntimeDep,
    start: From,
    end: To,
    by: Annotated[
        Literal["pool", "organisation", "kind", "project", "factory"], Query()
    ] = "project",
) -> list[UsageReportOut]:
    """GPU-hours, jobs and waits of the jobs you may see (operators: all), per group."""
    with runtime.reading() as session:
        rows = service.usage(session, actor=actor, by=by, start=start, end=end, now=runtime.clock())
    return [
        UsageReportOut(
            key=r.key,
            gpu_hours=r.gpu_hours,
            jobs=r.jobs,
            started=r.started,
            mean_wait_s=r.mean_wait_s,
            it_kwh=r.it_kwh,
            facility_kwh=r.facility_kwh,
            water_l=r.water_l,
            carbon_kg=r.carbon_kg,
        )
        for r in rows
    ]


@router.get("/reports/shares", response_model=list[ShareOut])
def shares(actor: ActorDep, runtime: RuntimeDep, start: From, end: To) -> list[ShareOut]:
    """Operators: per pool, GPU-hours delivered against the guarantee, and the part of the time
    with work waiting that it had at least its guaranteed GPUs, with the worst shortfall."""
    with runtime.reading() as session:
        rows = service.shares(
            session,
            actor=actor,
            start=start,
            end=end,
            now=runtime.clock(),
            total_gpus=sum(c.resources.gpus * c.nodes for c in runtime.partitions().values()),
        )
    return [
        ShareOut(
            pool=r.pool,
            guarantee=r.guarantee,
            guaranteed_gpu_hours=r.guaranteed_gpu_hours,
            delivered_gpu_hours=r.delivered_gpu_hours,
            demand_hours=r.demand_hours,
            served_fraction=r.served_fraction,
            worst_shortfall_gpus=r.worst_shortfall_gpus,
        )
        for r in rows
    ]
