"""The audit trail, for operators: every change, and refused attempts (docs/operators.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fabriek.server.schemas import AuditEventOut, AuditPage
from fabriek.server.schemas.types import MAX_ID, Timestamp
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import audit as service

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def list_events(
    actor: ActorDep,
    runtime: RuntimeDep,
    who: Annotated[
        str | None,
        Query(
            alias="actor",
            max_length=128,
            description="Only events of this actor: `user:NAME`, `controller`, `client:ADDRESS`.",
        ),
    ] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only this action and those below it: `job` is `job.submit`, "
            "`job.cancel`, ...; `access` every refused access.",
        ),
    ] = None,
    target_type: Annotated[
        str | None, Query(max_length=32, description="Only events about this kind of object.")
    ] = None,
    target_id: Annotated[
        str | None,
        Query(max_length=64, description="Only events about this object (with target_type)."),
    ] = None,
    since: Annotated[Timestamp | None, Query(description="Only events at or after this.")] = None,
    until: Annotated[Timestamp | None, Query(description="Only events before this.")] = None,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only events with a smaller id: a page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LIMIT)] = 100,
) -> AuditPage:
    """Operators: the newest audit events that pass the filters, newest first, a page at a time."""
    filters = service.AuditFilters(
        actor=who,
        action=action,
        target_type=target_type,
        target_id=target_id,
        since=since,
        until=until,
        before=before,
    )
    with runtime.reading() as session:
        events, next_before = service.list_events(
            session, actor=actor, filters=filters, limit=limit
        )
    return AuditPage(events=[AuditEventOut.of(e) for e in events], next_before=next_before)
