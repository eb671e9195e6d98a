"""The one place where a job's state changes. Every move is checked and leaves an event behind."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from fabriek.core.jobs import JobState, check_transition
from fabriek.server.db.models import JobEventRow, JobRow
from fabriek.server.services.allocations import settle

_TIMESTAMP_FOR = {
    JobState.ADMITTED: "admitted_at",
    JobState.RUNNING: "started_at",
}


def transition_job(
    session: Session,
    job: JobRow,
    to: JobState,
    *,
    at: datetime,
    actor: str,
    reason: str | None = None,
    **fields: Any,
) -> None:
    """Move `job` to state `to` at time `at`, with any other columns in `fields`.

    Raises IllegalTransition (and changes nothing) when the move is not allowed.
    """
    current = JobState(job.state)
    check_transition(job.id, current, to)
    job.state = to.value
    stamp = _TIMESTAMP_FOR.get(to)
    if stamp and getattr(job, stamp) is None:
        setattr(job, stamp, at)
    if to.is_final:
        job.finished_at = at
    job.reason = reason  # a waiting reason ends with the wait
    for name, value in fields.items():
        setattr(job, name, value)
    if to.is_final:  # whatever way it ended: release its hold, charge what it used
        settle(session, job)
    session.add(
        JobEventRow(
            job_id=job.id,
            at=at,
            from_state=current.value,
            to_state=to.value,
            actor=actor,
            reason=reason,
        )
    )


def record_submission(session: Session, job: JobRow, *, actor: str) -> None:
    """The first event of every job: it entered the queue."""
    session.connection().execute(
        _INSERT_EVENT,
        {
            "job_id": job.id,
            "at": job.submitted_at,
            "from_state": None,
            "to_state": job.state,
            "actor": actor,
            "reason": None,
        },
    )


_INSERT_EVENT = insert(JobEventRow.__table__)  # built once, for the hottest path
