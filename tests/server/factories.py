"""`make_*` helpers that build test data through the services, as a user would."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Capacity
from fabriek.core.jobs import Job, JobRequest, Resources
from fabriek.server.db.models import (
    OrganisationMemberRow,
    OrganisationRow,
    ProjectMemberRow,
    ProjectRow,
    UserRow,
)
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import bootstrap
from fabriek.server.services.jobs import submit_job

G = 2**30
LARGEST = Resources(2, 4 * G, 2)
PARTITIONS = {"local": Capacity(LARGEST)}


def make_admin(sessions: sessionmaker[Session], now: datetime) -> tuple[Actor, str]:
    with sessions() as session, session.begin():
        token = bootstrap(session, admin_name="admin", now=now)
        user = session.query(UserRow).filter_by(name="admin").one()
    assert token is not None
    return Actor(user.id, user.name, is_operator=True), token


def make_user(
    sessions: sessionmaker[Session],
    name: str,
    now: datetime,
    *,
    projects: tuple[str, ...] = (),
    org: str | None = None,
    org_role: str = "member",
    operator: bool = False,
    reviewer: bool = False,
) -> Actor:
    """A user in organisation `org` (default: one of their own, NAME-org) with role `org_role`,
    and a member of `projects`, which are created in that organisation when new."""
    org = org or f"{name}-org"
    with sessions() as session, session.begin():
        user = UserRow(name=name, is_operator=operator, is_reviewer=reviewer, created_at=now)
        session.add(user)
        organisation = session.query(OrganisationRow).filter_by(name=org).one_or_none()
        if organisation is None:
            organisation = OrganisationRow(
                name=org, display_name=org, kind="university", created_at=now
            )
            session.add(organisation)
        session.flush()
        session.add(
            OrganisationMemberRow(organisation_id=organisation.id, user_id=user.id, role=org_role)
        )
        for project_name in projects:
            project = session.query(ProjectRow).filter_by(name=project_name).one_or_none()
            if project is None:
                project = ProjectRow(
                    name=project_name, organisation_id=organisation.id, created_at=now
                )
                session.add(project)
                session.flush()
            session.add(ProjectMemberRow(project_id=project.id, user_id=user.id, role="member"))
        return Actor(user.id, name, is_operator=operator, is_reviewer=reviewer)


def make_request(
    argv: list[str] | None = None,
    *,
    cpus: int = 1,
    mem: int = G,
    gpus: int = 0,
    project: str = "default",
    time_limit_s: int = 60,
    name: str = "job",
    workdir_digest: str | None = None,
) -> JobRequest:
    return JobRequest(
        name=name,
        project=project,
        argv=argv or ["true"],
        resources=Resources(cpus, mem, gpus),
        time_limit_s=time_limit_s,
        env={},
        workdir_digest=workdir_digest,
    )


def make_job(sessions: sessionmaker[Session], actor: Actor, now: datetime, **kwargs: object) -> Job:
    with sessions() as session, session.begin():
        return submit_job(
            session,
            actor=actor,
            request=make_request(**kwargs),  # type: ignore[arg-type]
            partitions=PARTITIONS,
            now=now,
        )
