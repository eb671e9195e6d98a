"""Audit events: append-only, one for every change a person or the system makes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from fabriek.server.db.models import AuditEventRow
from fabriek.server.services.actors import Actor


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
    # Written at once (a prepared Core INSERT): it is append-only, nothing reads it back in the
    # same unit of work.
    session.connection().execute(
        _INSERT,
        {
            "at": at,
            "actor": actor.label,
            "action": action,
            "target_type": target_type,
            "target_id": str(target_id),
            "details": details,
        },
    )


_INSERT = insert(AuditEventRow.__table__)
