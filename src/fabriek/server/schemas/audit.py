"""API schemas: the audit trail (`GET /api/v1/audit`, operators)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from fabriek.core.audit import AuditEvent


class AuditEventOut(BaseModel):
    id: int = Field(description="Grows with every event: the order they were written in.")
    at: datetime
    actor: str = Field(
        description="`user:NAME`, `controller`, or for a refused token `client:ADDRESS`."
    )
    action: str = Field(description="Dotted, e.g. `job.cancel`, `access.forbidden`.")
    target_type: str
    target_id: str
    details: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEvent) -> AuditEventOut:
        return cls(
            id=e.id,
            at=e.at,
            actor=e.actor,
            action=e.action,
            target_type=e.target_type,
            target_id=e.target_id,
            details=e.details,
        )


class AuditPage(BaseModel):
    events: list[AuditEventOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        None, description="Pass as `before` for the next, older page; none: this is the last."
    )
