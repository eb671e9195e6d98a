"""Audit events: append-only, one for every change a person or the system makes, and one for
refused attempts (services.refusals). Operators read them (`fabriek audit list`).

A service records an event only when something changed: a repeat that changes nothing (a second
cancel of a job that is stopping, a role it already has) writes none. Rows are never updated;
ids only grow, so that a hash chain over them (core.audit) can be added without rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.orm import Session

from fabriek.core.audit import AuditEvent
from fabriek.core.errors import Forbidden, InvalidRequest
from fabriek.server.db.models import AuditEventRow
from fabriek.server.services.actors import Actor

MAX_LIMIT = 1000


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | int,
    at: datetime,
    **details: Any,
) -> None:
    """Append one event. `details` are JSON values (strings, numbers, booleans, None, lists and
    objects of them)."""
    append(
        session,
        actor=actor.label,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        at=at,
        details=details,
    )


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    at: datetime,
    details: dict[str, Any],
) -> None:
    """`record` for an actor given by its label (a refused client has no Actor)."""
    # Written at once (a prepared Core INSERT): it is append-only, nothing reads it back in the
    # same unit of work.
    session.connection().execute(
        _INSERT,
        {
            "at": at,
            "actor": actor,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "details": details,
        },
    )


_INSERT = insert(AuditEventRow.__table__)


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """Which events a listing shows: by `actor` (its label, e.g. `user:anna`), by `action` (that
    action and those below it: `job` is `job.submit`, `job.cancel`, ...), by target, in
    [since, until), and with ids below `before` (the next page)."""

    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None

    def where(self) -> list[ColumnElement[bool]]:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidRequest(
                f"the time range is empty: since {self.since.isoformat()} is not before "
                f"until {self.until.isoformat()}"
            )
        if self.target_id is not None and self.target_type is None:
            raise InvalidRequest("a target id needs its target type (e.g. job and 17)")
        rows = AuditEventRow
        conditions: list[ColumnElement[bool]] = []
        if self.actor is not None:
            conditions.append(rows.actor == self.actor)
        if self.action is not None:
            action = self.action.rstrip(".")
            below = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%"
            conditions.append(or_(rows.action == action, rows.action.like(below, escape="\\")))
        if self.target_type is not None:
            conditions.append(rows.target_type == self.target_type)
        if self.target_id is not None:
            conditions.append(rows.target_id == self.target_id)
        if self.since is not None:
            conditions.append(rows.at >= self.since.astimezone(UTC))
        if self.until is not None:
            conditions.append(rows.at < self.until.astimezone(UTC))
        if self.before is not None:
            conditions.append(rows.id < self.before)
        return conditions


def list_events(
    session: Session, *, actor: Actor, filters: AuditFilters = AuditFilters(), limit: int = 100
) -> tuple[list[AuditEvent], int | None]:
    """Operators: the newest events that pass `filters`, newest first, and the `before` of the
    next page (None when this one is the last)."""
    if not actor.is_operator:
        raise Forbidden("only operators read the audit trail")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"the limit is 1 to {MAX_LIMIT}, not {limit}")
    rows = session.scalars(
        select(AuditEventRow)
        .where(*filters.where())
        .order_by(AuditEventRow.id.desc())
        .limit(limit + 1)
    ).all()
    events = [
        AuditEvent(r.id, r.at, r.actor, r.action, r.target_type, r.target_id, r.details)
        for r in rows[:limit]
    ]
    return events, (events[-1].id if len(rows) > limit else None)
