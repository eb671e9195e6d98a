"""Allocations: projects' budgets of GPU-hours in pools. Operators grant them; a project's
members and its organisation's owners and managers see them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from fabriek.server.schemas import AllocationGrant, AllocationOut
from fabriek.server.schemas.types import PROJECT, id_path
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import allocations as service

router = APIRouter(prefix="/allocations", tags=["allocations"])

AllocationId = Annotated[int, id_path("Allocation")]


def _out(a: service.Allocation) -> AllocationOut:
    return AllocationOut(**asdict(a), left_gpu_hours=a.left_gpu_hours)


@router.post("", response_model=AllocationOut, status_code=201)
def grant(body: AllocationGrant, actor: ActorDep, runtime: RuntimeDep) -> AllocationOut:
    """Operators: give a project GPU-hours in a pool for a period (its organisation must be
    eligible for the pool)."""
    with runtime.transaction() as session:
        allocation = service.grant(
            session,
            actor=actor,
            project=body.project,
            pool=body.pool,
            gpu_hours=body.gpu_hours,
            days=body.days,
            starts_at=body.starts_at,
            note=body.note,
            now=runtime.clock(),
        )
    return _out(allocation)


@router.get("", response_model=list[AllocationOut])
def list_(
    actor: ActorDep,
    runtime: RuntimeDep,
    project: Annotated[
        str | None, Query(min_length=1, max_length=128, json_schema_extra={"pattern": PROJECT})
    ] = None,
) -> list[AllocationOut]:
    """Allocations of the projects you see (all for an operator)."""
    with runtime.reading() as session:
        found = service.list_allocations(session, actor=actor, project=project)
    return [_out(a) for a in found]


@router.get("/{allocation_id}", response_model=AllocationOut)
def get(allocation_id: AllocationId, actor: ActorDep, runtime: RuntimeDep) -> AllocationOut:
    with runtime.reading() as session:
        return _out(service.get_allocation(session, actor=actor, allocation_id=allocation_id))
