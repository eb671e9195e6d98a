"""Pools: shares of the factory. Everyone signed in reads them; operators change them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from fabriek.server.schemas import PoolCreate, PoolEligibilityOut, PoolOut, PoolUpdate
from fabriek.server.schemas.types import SLUG
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import pools as service

router = APIRouter(prefix="/pools", tags=["pools"])
eligibility = APIRouter(prefix="/organisations", tags=["pools"])

PoolName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": SLUG})]
OrgName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": SLUG})]


@router.get("", response_model=list[PoolOut])
def list_(actor: ActorDep, runtime: RuntimeDep) -> list[PoolOut]:
    """All pools, with their guarantees and who is eligible."""
    with runtime.reading() as session:
        return [PoolOut.of(p) for p in service.list_pools(session)]


@router.get("/{pool}", response_model=PoolOut)
def get(pool: PoolName, actor: ActorDep, runtime: RuntimeDep) -> PoolOut:
    with runtime.reading() as session:
        return PoolOut.of(service.get_pool(session, name=pool))


@router.post("", response_model=PoolOut, status_code=201)
def create(body: PoolCreate, actor: ActorDep, runtime: RuntimeDep) -> PoolOut:
    """Operators. The guarantees of all pools may sum to at most 100 %."""
    with runtime.transaction() as session:
        pool = service.create_pool(
            session,
            actor=actor,
            name=body.name,
            display_name=body.display_name,
            guarantee=body.guarantee,
            borrow_limit=body.borrow_limit,
            lend_limit=body.lend_limit,
            eligibility=body.eligibility.to_domain(),
            now=runtime.clock(),
        )
    return PoolOut.of(pool)


@router.patch("/{pool}", response_model=PoolOut)
def update(pool: PoolName, body: PoolUpdate, actor: ActorDep, runtime: RuntimeDep) -> PoolOut:
    """Operators: change a pool's share, limits or eligibility."""
    with runtime.transaction() as session:
        result = service.update_pool(
            session,
            actor=actor,
            name=pool,
            display_name=body.display_name,
            guarantee=body.guarantee,
            borrow_limit=body.borrow_limit,
            no_borrow_limit=body.no_borrow_limit,
            lend_limit=body.lend_limit,
            eligibility=body.eligibility.to_domain() if body.eligibility else None,
            now=runtime.clock(),
        )
    return PoolOut.of(result)


@eligibility.get("/{org}/pools", response_model=list[PoolEligibilityOut])
def pools_of(org: OrgName, actor: ActorDep, runtime: RuntimeDep) -> list[PoolEligibilityOut]:
    """For each pool: may this organisation get allocations in it, and if not, why."""
    with runtime.reading() as session:
        found = service.pools_for_organisation(session, actor=actor, organisation=org)
    return [PoolEligibilityOut(pool=p.name, eligible=why is None, why_not=why) for p, why in found]
