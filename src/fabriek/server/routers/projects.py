"""Projects and their members. Rules of who may do what: services/tenancy.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from fabriek.server.schemas import (
    MemberOut,
    ProjectCreate,
    ProjectMemberSet,
    ProjectOut,
    ProjectUpdate,
)
from fabriek.server.schemas.types import PROJECT, USER
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import tenancy as service

router = APIRouter(prefix="/projects", tags=["projects"])

ProjectName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": PROJECT})]
UserName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": USER})]


@router.post("", response_model=ProjectOut, status_code=201)
def create(body: ProjectCreate, actor: ActorDep, runtime: RuntimeDep) -> ProjectOut:
    """Owners and managers of the organisation; the creator manages the new project."""
    with runtime.transaction() as session:
        project = service.create_project(
            session,
            actor=actor,
            name=body.name,
            organisation=body.organisation,
            now=runtime.clock(),
            uids=runtime.uids,
        )
    return ProjectOut.of(project)


@router.get("", response_model=list[ProjectOut])
def list_(actor: ActorDep, runtime: RuntimeDep) -> list[ProjectOut]:
    """Projects you are in, and all projects of organisations you own or manage."""
    with runtime.reading() as session:
        return [ProjectOut.of(p) for p in service.list_projects(session, actor=actor)]


@router.get("/{project}", response_model=ProjectOut)
def get(project: ProjectName, actor: ActorDep, runtime: RuntimeDep) -> ProjectOut:
    with runtime.reading() as session:
        return ProjectOut.of(service.get_project(session, actor=actor, name=project))


@router.patch("/{project}", response_model=ProjectOut)
def update(
    project: ProjectName, body: ProjectUpdate, actor: ActorDep, runtime: RuntimeDep
) -> ProjectOut:
    """Operators lock the most network the project's jobs may have (host lifts the lock)."""
    with runtime.transaction() as session:
        result = service.update_project(
            session,
            actor=actor,
            name=project,
            network_limit=body.network_limit,
            now=runtime.clock(),
        )
    return ProjectOut.of(result)


@router.get("/{project}/members", response_model=list[MemberOut])
def members(project: ProjectName, actor: ActorDep, runtime: RuntimeDep) -> list[MemberOut]:
    with runtime.reading() as session:
        found = service.list_project_members(session, actor=actor, name=project)
    return [MemberOut(user=m.user, role=m.role) for m in found]


@router.put("/{project}/members/{user}", response_model=MemberOut)
def set_member(
    project: ProjectName,
    user: UserName,
    body: ProjectMemberSet,
    actor: ActorDep,
    runtime: RuntimeDep,
) -> MemberOut:
    """Add a member of the project's organisation, or change their role."""
    with runtime.transaction() as session:
        m = service.set_project_member(
            session, actor=actor, name=project, user=user, role=body.role, now=runtime.clock()
        )
    return MemberOut(user=m.user, role=m.role)


@router.delete("/{project}/members/{user}", status_code=204, response_class=Response)
def remove_member(
    project: ProjectName, user: UserName, actor: ActorDep, runtime: RuntimeDep
) -> Response:
    with runtime.transaction() as session:
        service.remove_project_member(
            session, actor=actor, name=project, user=user, now=runtime.clock()
        )
    return Response(status_code=204)
