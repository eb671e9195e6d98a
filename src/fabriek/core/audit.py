"""Audit events: who did what to which object and when, and who was refused. Append-only.

An event is written once and never changed. Its `details` hold JSON values only, so that one
canonical text (`canonical_details`) stands for them: what a tamper-evident chain over the events
(the airlock issue) hashes, together with the other fields in `CHAINED_FIELDS` order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# What one event is, in the order a hash chain would take its fields (id first: ids only grow).
CHAINED_FIELDS = ("id", "at", "actor", "action", "target_type", "target_id", "details")

# Refused attempts (written by services.refusals): a presented token refused, and a 403 or 404
# answered to a signed-in user.
TOKEN_REFUSED = "auth.token_refused"
FORBIDDEN = "access.forbidden"
NOT_FOUND = "access.not_found"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: datetime
    actor: str  # `user:NAME`, `controller`, or for a refused token `client:ADDRESS`
    action: str  # dotted: `job.cancel`, `access.forbidden`
    target_type: str
    target_id: str
    details: dict[str, Any]


def canonical_details(details: dict[str, Any]) -> str:
    """The one text of `details`: keys sorted, no spaces, UTF-8 kept. Equal details, equal text,
    whichever database stored them and in whatever key order."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
