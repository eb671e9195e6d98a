"""The roster (core/roster.py) as the database has it now: what the Slurm backends keep their
clusters' accounts in step with. Four small queries in one read; the caller holds no
transaction while it acts on the answer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.roster import Roster, RosterOrganisation, RosterProject
from fabriek.server.db.models import (
    OrganisationMemberRow,
    OrganisationRow,
    ProjectMemberRow,
    ProjectRow,
    UserRow,
)


def read_roster(session: Session) -> Roster:
    """Every organisation with its members, every project with a uid with its members."""
    orgs = dict(session.execute(select(OrganisationRow.id, OrganisationRow.name)).tuples().all())
    org_members: dict[int, set[str]] = defaultdict(set)
    for org_id, user in session.execute(
        select(OrganisationMemberRow.organisation_id, UserRow.name).join(
            UserRow, UserRow.id == OrganisationMemberRow.user_id
        )
    ).tuples():
        org_members[org_id].add(user)
    project_members: dict[int, set[str]] = defaultdict(set)
    for project_id, user in session.execute(
        select(ProjectMemberRow.project_id, UserRow.name).join(
            UserRow, UserRow.id == ProjectMemberRow.user_id
        )
    ).tuples():
        project_members[project_id].add(user)
    projects = session.execute(
        select(ProjectRow.id, ProjectRow.name, ProjectRow.organisation_id, ProjectRow.uid)
        .where(ProjectRow.uid.is_not(None))
        .order_by(ProjectRow.uid)
    ).tuples()
    return Roster(
        tuple(
            RosterOrganisation(name, frozenset(org_members[org_id]))
            for org_id, name in sorted(orgs.items(), key=lambda item: item[1])
        ),
        tuple(
            RosterProject(name, orgs[org_id], uid, frozenset(project_members[project_id]))
            for project_id, name, org_id, uid in projects
            if uid is not None
        ),
    )


def roster_reader(readers: sessionmaker[Session]) -> Callable[[], Roster]:
    """A function that reads the roster in a session of its own, closed before it returns."""

    def read() -> Roster:
        with readers() as session:
            return read_roster(session)

    return read
