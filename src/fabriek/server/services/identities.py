"""Projects' POSIX identities: a uid (= gid) each, from the operator's range, never reused.

A project gets its uid when it is made (tenancy.create_project); a project made before
identities were kept gets one when the server starts (`ensure_identities`). Projects are never
deleted, so the highest uid given so far plus one is always free, and a uid once given stays
with its project: files a job left on a shared filesystem never change owner.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fabriek.core.errors import Conflict
from fabriek.core.identity import Identity, UidRange
from fabriek.server.db.models import ProjectRow


def next_uid(session: Session, uids: UidRange) -> int:
    """The next free uid of the range; raises Conflict when the range is used up."""
    highest = session.scalar(
        select(func.max(ProjectRow.uid)).where(ProjectRow.uid.between(uids.first, uids.last))
    )
    uid = uids.first if highest is None else highest + 1
    if uid not in uids:
        raise Conflict(
            f"the uid range {uids.first}-{uids.last} is used up: every uid in it belongs to a "
            "project; an operator must widen FABRIEK_UID_RANGE"
        )
    return uid


def ensure_identities(session: Session, uids: UidRange) -> int:
    """Give each project without a uid one, oldest first; returns how many were given."""
    rows = session.scalars(
        select(ProjectRow).where(ProjectRow.uid.is_(None)).order_by(ProjectRow.id)
    ).all()
    for row in rows:
        row.uid = next_uid(session, uids)
        session.flush()
    return len(rows)


def identity_of(row: ProjectRow) -> Identity | None:
    """Who the project's jobs run as; None for a project not given a uid yet."""
    return Identity(row.uid, row.uid, row.name) if row.uid is not None else None
