"""Organisations, their members and their projects.

Who may do what:
- anyone signed in may create an organisation, and becomes its owner; it starts unverified;
- operators see and change everything, and alone verify organisations;
- an organisation's owners change it and grant any role in it; its managers create projects and add
  or remove plain members; its members see it;
- a project is seen by its members and by its organisation's owners and managers, who with the
  project's managers add and remove its members (who must belong to the organisation).

What a user may not see is reported as absent (404), never as forbidden, so that names of other
tenants' organisations and projects do not leak.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CompoundSelect, Select, delete, func, select
from sqlalchemy.orm import Session

from fabriek.core.errors import Conflict, Forbidden, NotFound
from fabriek.core.identity import DEFAULT_UID_RANGE, Network, UidRange, parse_uid_range
from fabriek.core.tenancy import (
    Member,
    Organisation,
    OrgKind,
    OrgRole,
    Project,
    ProjectRole,
    check_display_name,
    check_location,
    check_org_name,
    check_project_name,
    org_role_may_grant,
)
from fabriek.server.db.models import (
    OrganisationMemberRow,
    OrganisationRow,
    ProjectMemberRow,
    ProjectRow,
    UserRow,
)
from fabriek.server.services import audit, identities
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import auth_changed

DEFAULT_UIDS = parse_uid_range(DEFAULT_UID_RANGE)

MANAGING = (OrgRole.OWNER.value, OrgRole.MANAGER.value)


# --- organisations ------------------------------------------------------------------------------
def _org_role(session: Session, actor: Actor, org_id: int) -> OrgRole | None:
    role = session.scalar(
        select(OrganisationMemberRow.role).where(
            OrganisationMemberRow.organisation_id == org_id,
            OrganisationMemberRow.user_id == actor.user_id,
        )
    )
    return OrgRole(role) if role else None


def _visible_org(
    session: Session, actor: Actor, name: str
) -> tuple[OrganisationRow, OrgRole | None]:
    row = session.scalar(select(OrganisationRow).where(OrganisationRow.name == name))
    role = _org_role(session, actor, row.id) if row is not None else None
    if row is None or (role is None and not actor.is_operator):
        raise NotFound(f"no organisation named {name!r}")
    return row, role


def _to_org(row: OrganisationRow, role: OrgRole | None) -> Organisation:
    return Organisation(
        name=row.name,
        display_name=row.display_name,
        kind=OrgKind(row.kind),
        country=row.country,
        region=row.region,
        verified_at=row.verified_at,
        verified_by=row.verified_by,
        created_at=row.created_at,
        my_role=role,
    )


def create_organisation(
    session: Session,
    *,
    actor: Actor,
    name: str,
    display_name: str,
    kind: OrgKind,
    country: str | None,
    region: str | None,
    now: datetime,
) -> Organisation:
    check_org_name(name)
    display_name = check_display_name(display_name)
    country, region = check_location(country, region)
    if session.scalar(select(OrganisationRow.id).where(OrganisationRow.name == name)):
        raise Conflict(f"an organisation named {name!r} exists already")
    row = OrganisationRow(
        name=name,
        display_name=display_name,
        kind=kind.value,
        country=country,
        region=region,
        created_at=now,
    )
    session.add(row)
    session.flush()
    session.add(
        OrganisationMemberRow(organisation_id=row.id, user_id=actor.user_id, role=OrgRole.OWNER)
    )
    audit.record(
        session,
        actor=actor,
        action="organisation.create",
        target_type="organisation",
        target_id=row.id,
        at=now,
        name=name,
        kind=kind.value,
        country=country,
        region=region,
    )
    return _to_org(row, OrgRole.OWNER)


def list_organisations(session: Session, *, actor: Actor) -> list[Organisation]:
    query = (
        select(OrganisationRow, OrganisationMemberRow.role)
        .outerjoin(
            OrganisationMemberRow,
            (OrganisationMemberRow.organisation_id == OrganisationRow.id)
            & (OrganisationMemberRow.user_id == actor.user_id),
        )
        .order_by(OrganisationRow.name)
    )
    if not actor.is_operator:
        query = query.where(OrganisationMemberRow.user_id.is_not(None))
    return [_to_org(row, OrgRole(role) if role else None) for row, role in session.execute(query)]


def get_organisation(session: Session, *, actor: Actor, name: str) -> Organisation:
    return _to_org(*_visible_org(session, actor, name))


def update_organisation(
    session: Session,
    *,
    actor: Actor,
    name: str,
    display_name: str | None = None,
    kind: OrgKind | None = None,
    country: str | None = None,
    region: str | None = None,
    now: datetime,
) -> Organisation:
    """Change what is given. A change of kind, country or region by anyone but an operator takes
    the verification away: eligibility for pools and calls rests on them."""
    row, role = _visible_org(session, actor, name)
    if role != OrgRole.OWNER and not actor.is_operator:
        raise Forbidden(f"only owners of {name!r} and operators may change it")
    changes: dict[str, object] = {}
    if display_name is not None:
        changes["display_name"] = check_display_name(display_name)
    if kind is not None:
        changes["kind"] = kind.value
    if country is not None or region is not None:
        new_country, new_region = check_location(
            country if country is not None else row.country,
            region if region is not None else row.region,
        )
        changes.update(country=new_country, region=new_region)
    changes = {k: v for k, v in changes.items() if getattr(row, k) != v}
    if not changes:
        return _to_org(row, role)
    # Eligibility rests on kind, country and region: an owner changing them needs a new check.
    unverify = bool({"kind", "country", "region"} & changes.keys()) and not actor.is_operator
    for key, value in changes.items():
        setattr(row, key, value)
    if unverify and row.verified_at is not None:
        row.verified_at, row.verified_by = None, None
        changes["verified"] = False
    audit.record(
        session,
        actor=actor,
        action="organisation.update",
        target_type="organisation",
        target_id=row.id,
        at=now,
        name=name,
        **changes,
    )
    return _to_org(row, role)


def verify_organisation(
    session: Session, *, actor: Actor, name: str, verified: bool, now: datetime
) -> Organisation:
    """Operators confirm (or withdraw) that an organisation is who and where it says it is."""
    row, role = _visible_org(session, actor, name)
    if not actor.is_operator:
        raise Forbidden("only operators verify organisations")
    if (row.verified_at is not None) != verified:
        row.verified_at, row.verified_by = (now, actor.name) if verified else (None, None)
        audit.record(
            session,
            actor=actor,
            action="organisation.verify" if verified else "organisation.unverify",
            target_type="organisation",
            target_id=row.id,
            at=now,
            name=name,
            country=row.country,
            region=row.region,
        )
    return _to_org(row, role)


def list_org_members(session: Session, *, actor: Actor, name: str) -> list[Member]:
    row, _ = _visible_org(session, actor, name)
    return [
        Member(user, role)
        for user, role in session.execute(
            select(UserRow.name, OrganisationMemberRow.role)
            .join(UserRow, UserRow.id == OrganisationMemberRow.user_id)
            .where(OrganisationMemberRow.organisation_id == row.id)
            .order_by(UserRow.name)
        )
    ]


def _user_by_name(session: Session, name: str) -> UserRow:
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def _owners(session: Session, org_id: int) -> int:
    """Owners of the organisation, counted with its row locked, so that two owners removing
    each other at once cannot both pass the last-owner check."""
    session.execute(
        select(OrganisationRow.id).where(OrganisationRow.id == org_id).with_for_update()
    )
    return (
        session.scalar(
            select(func.count()).where(
                OrganisationMemberRow.organisation_id == org_id,
                OrganisationMemberRow.role == OrgRole.OWNER.value,
            )
        )
        or 0
    )


def set_org_member(
    session: Session, *, actor: Actor, name: str, user: str, role: OrgRole, now: datetime
) -> Member:
    """Add `user` to the organisation with `role`, or change their role."""
    org, mine = _visible_org(session, actor, name)
    target = _user_by_name(session, user)
    current = session.get(OrganisationMemberRow, (org.id, target.id), with_for_update=True)
    if not actor.is_operator:
        if mine is None or not org_role_may_grant(mine, role):
            raise Forbidden(f"your role in {name!r} may not grant the role {role.value}")
        if current is not None and not org_role_may_grant(mine, OrgRole(current.role)):
            raise Forbidden(f"your role in {name!r} may not change the role of {user!r}")
    if current is not None and current.role == role.value:
        return Member(user, role.value)
    if current is not None and current.role == OrgRole.OWNER and _owners(session, org.id) == 1:
        raise Conflict(f"{user!r} is the last owner of {name!r}; make someone else owner first")
    previous = current.role if current is not None else None
    if current is None:
        session.add(OrganisationMemberRow(organisation_id=org.id, user_id=target.id, role=role))
    else:
        current.role = role.value
    auth_changed(session)
    audit.record(
        session,
        actor=actor,
        action="organisation.member.set",
        target_type="organisation",
        target_id=org.id,
        at=now,
        name=name,
        user=user,
        role=role.value,
        previous=previous,
    )
    return Member(user, role.value)


def remove_org_member(
    session: Session, *, actor: Actor, name: str, user: str, now: datetime
) -> None:
    """Remove `user` from the organisation and from all of its projects."""
    org, mine = _visible_org(session, actor, name)
    target = _user_by_name(session, user)
    current = session.get(OrganisationMemberRow, (org.id, target.id), with_for_update=True)
    if current is None:
        raise NotFound(f"{user!r} is not a member of {name!r}")
    if not actor.is_operator and (
        mine is None or not org_role_may_grant(mine, OrgRole(current.role))
    ):
        raise Forbidden(f"your role in {name!r} may not remove {user!r}")
    if current.role == OrgRole.OWNER and _owners(session, org.id) == 1:
        raise Conflict(f"{user!r} is the last owner of {name!r}; make someone else owner first")
    projects = select(ProjectRow.id).where(ProjectRow.organisation_id == org.id)
    session.execute(
        delete(ProjectMemberRow).where(
            ProjectMemberRow.user_id == target.id, ProjectMemberRow.project_id.in_(projects)
        )
    )
    session.delete(current)
    auth_changed(session)
    audit.record(
        session,
        actor=actor,
        action="organisation.member.remove",
        target_type="organisation",
        target_id=org.id,
        at=now,
        name=name,
        user=user,
        role=current.role,
    )


# --- projects -----------------------------------------------------------------------------------
def managed_project_ids(actor: Actor) -> Select[tuple[int]]:
    """The projects of the organisations the actor owns or manages."""
    return select(ProjectRow.id).where(
        ProjectRow.organisation_id.in_(
            select(OrganisationMemberRow.organisation_id).where(
                OrganisationMemberRow.user_id == actor.user_id,
                OrganisationMemberRow.role.in_(MANAGING),
            )
        )
    )


def visible_project_ids(actor: Actor) -> CompoundSelect:
    """The projects a (non-operator) actor sees: theirs, and those of organisations they own
    or manage. Jobs, allocations and applications are seen with their project."""
    mine = select(ProjectMemberRow.project_id).where(ProjectMemberRow.user_id == actor.user_id)
    return mine.union(managed_project_ids(actor))


def project_access(
    session: Session, actor: Actor, name: str
) -> tuple[ProjectRow, OrganisationRow, OrgRole | None, ProjectRole | None]:
    found = session.execute(
        select(ProjectRow, OrganisationRow)
        .join(OrganisationRow, OrganisationRow.id == ProjectRow.organisation_id)
        .where(ProjectRow.name == name)
    ).first()
    if found is None:
        raise NotFound(f"no project named {name!r}")
    project, org = found
    org_role = _org_role(session, actor, org.id)
    member = session.scalar(
        select(ProjectMemberRow.role).where(
            ProjectMemberRow.project_id == project.id, ProjectMemberRow.user_id == actor.user_id
        )
    )
    project_role = ProjectRole(member) if member else None
    sees = project_role is not None or org_role in (OrgRole.OWNER, OrgRole.MANAGER)
    if not sees and not actor.is_operator:
        raise NotFound(f"no project named {name!r}")
    return project, org, org_role, project_role


def may_manage_project(actor: Actor, org_role: OrgRole | None, role: ProjectRole | None) -> bool:
    return (
        actor.is_operator
        or org_role in (OrgRole.OWNER, OrgRole.MANAGER)
        or role == ProjectRole.MANAGER
    )


def create_project(
    session: Session,
    *,
    actor: Actor,
    name: str,
    organisation: str,
    now: datetime,
    uids: UidRange = DEFAULT_UIDS,
) -> Project:
    """A project in `organisation`, with its own uid from `uids`; its creator (unless an
    operator from outside) manages it."""
    check_project_name(name)
    org, mine = _visible_org(session, actor, organisation)
    if mine not in (OrgRole.OWNER, OrgRole.MANAGER) and not actor.is_operator:
        raise Forbidden(f"only owners and managers of {organisation!r} create its projects")
    if session.scalar(select(ProjectRow.id).where(ProjectRow.name == name)):
        raise Conflict(f"a project named {name!r} exists already")
    row = ProjectRow(
        name=name, organisation_id=org.id, created_at=now, uid=identities.next_uid(session, uids)
    )
    session.add(row)
    session.flush()
    role = None
    if mine is not None:
        role = ProjectRole.MANAGER
        session.add(ProjectMemberRow(project_id=row.id, user_id=actor.user_id, role=role.value))
    audit.record(
        session,
        actor=actor,
        action="project.create",
        target_type="project",
        target_id=row.id,
        at=now,
        name=name,
        organisation=organisation,
        uid=row.uid,
    )
    return Project(name, org.name, now, role)


def list_projects(session: Session, *, actor: Actor) -> list[Project]:
    """The projects the actor is in, and all projects of organisations they own or manage."""
    query = (
        select(ProjectRow, OrganisationRow.name, ProjectMemberRow.role)
        .join(OrganisationRow, OrganisationRow.id == ProjectRow.organisation_id)
        .outerjoin(
            ProjectMemberRow,
            (ProjectMemberRow.project_id == ProjectRow.id)
            & (ProjectMemberRow.user_id == actor.user_id),
        )
        .order_by(ProjectRow.name)
    )
    if not actor.is_operator:
        query = query.where(
            ProjectMemberRow.user_id.is_not(None) | ProjectRow.id.in_(managed_project_ids(actor))
        )
    return [
        _to_project(row, org, ProjectRole(role) if role else None)
        for row, org, role in session.execute(query)
    ]


def _to_project(row: ProjectRow, organisation: str, role: ProjectRole | None) -> Project:
    lock = Network(row.network_limit) if row.network_limit else None
    return Project(row.name, organisation, row.created_at, role, lock)


def get_project(session: Session, *, actor: Actor, name: str) -> Project:
    project, org, _, role = project_access(session, actor, name)
    return _to_project(project, org.name, role)


def update_project(
    session: Session,
    *,
    actor: Actor,
    name: str,
    network_limit: Network | None = None,
    now: datetime,
) -> Project:
    """Change what is given. Operators alone set `network_limit`, the most network the
    project's jobs may have (`host`: no lock, its partitions' limits alone apply). Jobs asking
    for more are refused from then on; those waiting are failed when they would start, with
    the reason; running ones keep theirs."""
    project, org, _, role = project_access(session, actor, name)
    if network_limit is None:
        return _to_project(project, org.name, role)
    if not actor.is_operator:
        raise Forbidden(f"only operators lock the network of project {name!r}")
    # A lock at host locks nothing: kept as none.
    stored = None if network_limit == Network.HOST else network_limit.value
    if project.network_limit != stored:
        previous, project.network_limit = project.network_limit, stored
        audit.record(
            session,
            actor=actor,
            action="project.network_limit",
            target_type="project",
            target_id=project.id,
            at=now,
            name=name,
            network_limit=stored,
            previous=previous,
        )
    return _to_project(project, org.name, role)


def list_project_members(session: Session, *, actor: Actor, name: str) -> list[Member]:
    project, *_ = project_access(session, actor, name)
    return [
        Member(user, role)
        for user, role in session.execute(
            select(UserRow.name, ProjectMemberRow.role)
            .join(UserRow, UserRow.id == ProjectMemberRow.user_id)
            .where(ProjectMemberRow.project_id == project.id)
            .order_by(UserRow.name)
        )
    ]


def set_project_member(
    session: Session, *, actor: Actor, name: str, user: str, role: ProjectRole, now: datetime
) -> Member:
    project, org, org_role, mine = project_access(session, actor, name)
    if not may_manage_project(actor, org_role, mine):
        raise Forbidden(f"only managers of project {name!r} and of its organisation add members")
    target = _user_by_name(session, user)
    # Locked: a concurrent removal from the organisation must not leave them in the project.
    in_org = session.get(OrganisationMemberRow, (org.id, target.id), with_for_update=True)
    if in_org is None:
        raise Conflict(
            f"{user!r} is not a member of organisation {org.name!r}; add them there first"
        )
    current = session.get(ProjectMemberRow, (project.id, target.id), with_for_update=True)
    if current is not None and current.role == role.value:
        return Member(user, role.value)
    previous = current.role if current is not None else None
    if current is None:
        session.add(ProjectMemberRow(project_id=project.id, user_id=target.id, role=role.value))
    else:
        current.role = role.value
    auth_changed(session)
    audit.record(
        session,
        actor=actor,
        action="project.member.set",
        target_type="project",
        target_id=project.id,
        at=now,
        name=name,
        user=user,
        role=role.value,
        previous=previous,
    )
    return Member(user, role.value)


def remove_project_member(
    session: Session, *, actor: Actor, name: str, user: str, now: datetime
) -> None:
    project, _, org_role, mine = project_access(session, actor, name)
    if not may_manage_project(actor, org_role, mine):
        raise Forbidden(f"only managers of project {name!r} and of its organisation remove members")
    target = _user_by_name(session, user)
    current = session.get(ProjectMemberRow, (project.id, target.id), with_for_update=True)
    if current is None:
        raise NotFound(f"{user!r} is not a member of project {name!r}")
    session.delete(current)
    auth_changed(session)
    audit.record(
        session,
        actor=actor,
        action="project.member.remove",
        target_type="project",
        target_id=project.id,
        at=now,
        name=name,
        user=user,
        role=current.role,
    )
