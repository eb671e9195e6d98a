"""Organisations and their members. Rules of who may do what: services/tenancy.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from fabriek.server.schemas import (
    MemberOut,
    OrganisationCreate,
    OrganisationOut,
    OrganisationUpdate,
    OrgMemberSet,
    Verification,
)
from fabriek.server.schemas.types import SLUG, USER
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import tenancy as service

router = APIRouter(prefix="/organisations", tags=["organisations"])

OrgName = Annotated[
    str,
    Path(
        max_length=128,
        json_schema_extra={"pattern": SLUG},
        description="The organisation's handle.",
    ),
]
UserName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": USER})]


@router.post("", response_model=OrganisationOut, status_code=201)
def create(body: OrganisationCreate, actor: ActorDep, runtime: RuntimeDep) -> OrganisationOut:
    """Register an organisation; you become its owner. An operator verifies it later."""
    with runtime.transaction() as session:
        org = service.create_organisation(
            session,
            actor=actor,
            name=body.name,
            display_name=body.display_name,
            kind=body.kind,
            country=body.country,
            region=body.region,
            now=runtime.clock(),
        )
    return OrganisationOut.of(org)


@router.get("", response_model=list[OrganisationOut])
def list_(actor: ActorDep, runtime: RuntimeDep) -> list[OrganisationOut]:
    """The organisations you belong to (all of them for an operator)."""
    with runtime.reading() as session:
        return [OrganisationOut.of(o) for o in service.list_organisations(session, actor=actor)]


@router.get("/{org}", response_model=OrganisationOut)
def get(org: OrgName, actor: ActorDep, runtime: RuntimeDep) -> OrganisationOut:
    with runtime.reading() as session:
        return OrganisationOut.of(service.get_organisation(session, actor=actor, name=org))


@router.patch("/{org}", response_model=OrganisationOut)
def update(
    org: OrgName, body: OrganisationUpdate, actor: ActorDep, runtime: RuntimeDep
) -> OrganisationOut:
    """Owners and operators. A new country or region set by an owner needs verifying again."""
    with runtime.transaction() as session:
        result = service.update_organisation(
            session,
            actor=actor,
            name=org,
            display_name=body.display_name,
            kind=body.kind,
            country=body.country,
            region=body.region,
            now=runtime.clock(),
        )
    return OrganisationOut.of(result)


@router.post("/{org}/verify", response_model=OrganisationOut)
def verify(
    org: OrgName, body: Verification, actor: ActorDep, runtime: RuntimeDep
) -> OrganisationOut:
    """Operators: confirm (or with `verified: false` withdraw) the organisation's identity and region."""
    with runtime.transaction() as session:
        result = service.verify_organisation(
            session, actor=actor, name=org, verified=body.verified, now=runtime.clock()
        )
    return OrganisationOut.of(result)


@router.get("/{org}/members", response_model=list[MemberOut])
def members(org: OrgName, actor: ActorDep, runtime: RuntimeDep) -> list[MemberOut]:
    with runtime.reading() as session:
        found = service.list_org_members(session, actor=actor, name=org)
    return [MemberOut(user=m.user, role=m.role) for m in found]


@router.put("/{org}/members/{user}", response_model=MemberOut)
def set_member(
    org: OrgName, user: UserName, body: OrgMemberSet, actor: ActorDep, runtime: RuntimeDep
) -> MemberOut:
    """Add a user or change their role. Owners grant any role, managers only `member`."""
    with runtime.transaction() as session:
        m = service.set_org_member(
            session, actor=actor, name=org, user=user, role=body.role, now=runtime.clock()
        )
    return MemberOut(user=m.user, role=m.role)


@router.delete("/{org}/members/{user}", status_code=204, response_class=Response)
def remove_member(org: OrgName, user: UserName, actor: ActorDep, runtime: RuntimeDep) -> Response:
    """Remove a user from the organisation and from all its projects."""
    with runtime.transaction() as session:
        service.remove_org_member(session, actor=actor, name=org, user=user, now=runtime.clock())
    return Response(status_code=204)
