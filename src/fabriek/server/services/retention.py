"""The retention policy for jobs' files, and the projects' disk quota.

Jobs leave directories behind (backends.base.RunDirectories): their logs, their outputs and
their working copy of the workdir (one job left 200,000 inodes). The controller calls
`Retention.step` once a pass; at most once a minute, and at once after a pass that saw jobs
end, it hands a round to a thread of its own, so that admission never waits on a disk:

1. tidy: a job that ended since the last round has its working copies removed, unless the
   operator keeps them (`keep_work_dirs`), and its directories measured (`tidied_at`);
2. expire: a job that ended more than `outputs_retention_days` ago has its directories removed,
   outputs and logs alike; the job records when (`files_removed_at`: asking for them then
   answers 410 files_removed) and the audit trail says so (`job.outputs_removed`, by the system);
3. workdirs: an uploaded workdir archive that no unfinished job uses, that no job submitted
   in the retention period used, and that was stored before it, is removed (`workdir.removed`,
   by the system): its file goes and its uploaders' records with it, so that asking for it
   answers 404 and the client uploads it again (the archive's row stays: old jobs name it);
4. quota (`project_disk_quota_bytes`): the running jobs are measured and each project's total
   kept on the project; a project over its quota has its running jobs stopped (they end failed,
   "output quota exceeded: X of Y") and its submissions refused (`check_quota`).

Until the sandbox enforces a filesystem quota this one checks and refuses: a job may write for
up to a minute past it. Measuring stays cheap: one walk per job at its end, and per round at
most MEASURE_LIMIT entries of one running job and MEASURE_BUDGET of all, the least recently
measured first. Every part repeats safely: a round that crashes is done again by the next.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import WORK_DIR, Backend
from fabriek.core.errors import QuotaExceeded
from fabriek.core.jobs import FINAL_STATES, JobState
from fabriek.core.units import format_bytes_apart
from fabriek.server.db.engine import transaction
from fabriek.server.db.models import JobRow, ProjectRow, WorkdirRow, WorkdirUserRow
from fabriek.server.services import audit, filetree
from fabriek.server.services.actors import SYSTEM
from fabriek.server.services.workdirs import archive_path
from fabriek.settings import Settings

log = logging.getLogger(__name__)

EVERY_S = 60.0  # between full rounds
BATCH = 500  # jobs tidied, and jobs expired, per round
MEASURE_LIMIT = 200_000  # entries one job's measure may read
MEASURE_BUDGET = 1_000_000  # entries the running jobs' measures of one round may read
FINAL = tuple(s.value for s in FINAL_STATES)
ACTIVE = (JobState.ADMITTED.value, JobState.RUNNING.value)
QUOTA_STOP = "output quota exceeded"


@dataclass(frozen=True, slots=True)
class Policy:
    """What the operator chose (settings.py says each in words)."""

    keep_work_dirs: bool = False
    retention_days: float = 30.0  # 0: kept for ever
    quota_bytes: int | None = None  # None: no quota

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            keep_work_dirs=settings.keep_work_dirs,
            retention_days=settings.outputs_retention_days,
            quota_bytes=settings.project_disk_quota_bytes,
        )


@dataclass
class Round:
    """What one round did."""

    tidied: int = 0
    work_entries_removed: int = 0
    expired: int = 0
    workdirs_removed: int = 0
    measured: int = 0
    stopped: list[int] = field(default_factory=list)
    over_quota: dict[str, int] = field(default_factory=dict)  # project -> bytes held


def run_instances(submitted_at: datetime, preemptions: int) -> list[str]:
    """The instance of each run of a job, as controller.loop.launch_spec names them: one per
    launch, the first, then one more after each preemption."""
    base = str(int(submitted_at.timestamp() * 1_000_000))
    return [base] + [f"{base}r{n}" for n in range(1, preemptions + 1)]


def stopped(row: JobRow, target: JobState, reason: str | None) -> tuple[JobState, str | None]:
    """How a job ends that the system stopped (`row.stop_reason`, e.g. its project's quota):
    failed, with that reason, where its process reported the stop as a cancel."""
    if row.stop_reason is not None and target == JobState.CANCELLED:
        return JobState.FAILED, row.stop_reason
    return target, reason


def check_quota(
    session: Session, *, project_id: int, project: str, quota_bytes: int | None
) -> None:
    """Refuse a submission to a project whose jobs hold its disk quota or more (as the last
    round measured them). Called once the submitter's membership is known: the figures are
    the project's own business."""
    if quota_bytes is None:
        return
    held = session.scalar(select(ProjectRow.disk_bytes).where(ProjectRow.id == project_id))
    if held is not None and held >= quota_bytes:
        have, limit = format_bytes_apart(held, quota_bytes)
        raise QuotaExceeded(
            f"project {project}'s jobs hold {have} of its {limit} disk quota on this server "
            "(outputs, logs and working copies): no new jobs until they hold less; outputs are "
            "removed when the retention period ends, or an operator can raise the quota"
        )


def _uses(cutoff: datetime) -> ColumnElement[bool]:
    """A job that keeps its workdir: unfinished, or submitted within the retention period."""
    return or_(JobRow.state.not_in(FINAL), JobRow.submitted_at >= cutoff)


class Retention:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        backends: Mapping[str, Backend],
        clock: Callable[[], datetime],
        policy: Policy,
        readers: sessionmaker[Session] | None = None,
        workdirs: Path | None = None,
    ) -> None:
        self.sessions = sessions
        self.workdirs = workdirs  # the uploaded workdirs' store (settings.workdirs_dir)
        self.readers = readers or sessions
        self.backends = backends
        self.clock = clock
        self.policy = policy
        self._thread: threading.Thread | None = None
        self._last: datetime | None = None  # when the last full round began
        self._ended = False  # jobs ended since the last round began
        self._measured: dict[int, float] = {}  # running job -> when last measured (monotonic)

    # --- when ---------------------------------------------------------------------------------
    def step(self, *, ended: bool) -> None:
        """Called on every controller pass; `ended`: the pass saw jobs end. Starts a round on
        the retention thread unless one runs: a full one a minute after the last, a tidy alone
        when jobs ended. Returns at once."""
        self._ended |= ended
        if self._thread is not None and self._thread.is_alive():
            return  # jobs that ended meanwhile are tidied by the round after it
        now = self.clock()
        full = self._last is None or not (
            self._last <= now < self._last + timedelta(seconds=EVERY_S)
        )
        if not (full or self._ended):
            return
        self._ended = False
        if full:
            self._last = now
        self._thread = threading.Thread(
            target=self._round, args=(now, full), name="retention", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Until the round under way (if any) is done."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _round(self, now: datetime, full: bool) -> None:
        try:
            done = self.run(now, full=full)
        except Exception:  # the next round repeats what this one did not finish
            log.exception("retention round failed; the next one tries again")
            return
        if done.tidied or done.expired or done.stopped or done.workdirs_removed:
            log.info(
                "retention: %d jobs tidied (%d entries of working copies removed), %d jobs' "
                "files removed, %d workdirs removed, %d jobs stopped for the disk quota",
                done.tidied,
                done.work_entries_removed,
                done.expired,
                done.workdirs_removed,
                len(done.stopped),
            )

    def run(self, now: datetime, *, full: bool = True) -> Round:
        """One round, here and now (the thread's work; tests call it with their clock)."""
        done = Round()
        self.tidy(now, done)
        if full:
            self.expire(now, done)
            self.expire_workdirs(now, done)
            self.enforce_quota(now, done)
        return done

    # --- 1. tidy ------------------------------------------------------------------------------
    def tidy(self, now: datetime, done: Round) -> None:
        with self.readers() as session:
            rows = session.execute(
                select(
                    JobRow.id,
                    JobRow.backend,
                    JobRow.submitted_at,
                    JobRow.preemptions,
                    JobRow.handle,
                )
                .where(JobRow.tidied_at.is_(None), JobRow.state.in_(FINAL))
                .order_by(JobRow.id)
                .limit(BATCH)
            ).all()
        changes = []
        for job_id, partition, submitted_at, preemptions, handle in rows:
            dirs = self._dirs(job_id, partition, submitted_at, preemptions) if handle else []
            try:
                if not self.policy.keep_work_dirs:
                    for directory in dirs:
                        done.work_entries_removed += filetree.remove_tree(directory / WORK_DIR)
                size, _ = self._measure(dirs, MEASURE_LIMIT)
            except Exception:  # e.g. a tree a leftover process keeps moving: next round
                log.exception("cannot tidy job %s's files; trying again next round", job_id)
                continue
            changes.append({"id": job_id, "tidied_at": now, "disk_bytes": size})
        if changes:
            with transaction(self.sessions) as session:
                session.execute(update(JobRow), changes)  # by primary key, one statement
            done.tidied += len(changes)

    # --- 2. expire ----------------------------------------------------------------------------
    def expire(self, now: datetime, done: Round) -> None:
        days = self.policy.retention_days
        if days <= 0:
            return
        cutoff = now - timedelta(days=days)
        with self.readers() as session:
            rows = session.execute(
                select(
                    JobRow.id,
                    JobRow.backend,
                    JobRow.submitted_at,
                    JobRow.preemptions,
                    JobRow.handle,
                    JobRow.finished_at,
                )
                .where(
                    JobRow.files_removed_at.is_(None),
                    JobRow.finished_at < cutoff,
                    JobRow.tidied_at.is_not(None),
                    JobRow.state.in_(FINAL),
                    JobRow.admitted_at.is_not(None),  # one never admitted left no files
                )
                .order_by(JobRow.finished_at)
                .limit(BATCH)
            ).all()
        for job_id, partition, submitted_at, preemptions, handle, finished_at in rows:
            dirs = self._dirs(job_id, partition, submitted_at, preemptions) if handle else []
            try:
                removed = sum(filetree.remove_tree(directory) for directory in dirs)
            except Exception:
                log.exception("cannot remove job %s's files; trying again next round", job_id)
                continue
            with transaction(self.sessions) as session:
                changed = session.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.files_removed_at.is_(None))
                    .values(files_removed_at=now, disk_bytes=0)
                    .returning(JobRow.id)
                ).first()
                if changed is not None and handle:  # (nothing was there to remove)
                    audit.record(
                        session,
                        actor=SYSTEM,
                        action="job.outputs_removed",
                        target_type="job",
                        target_id=job_id,
                        at=now,
                        reason=f"retention: kept {days:g} days after the job ended",
                        ended_at=finished_at.isoformat(),
                        entries=removed,
                    )
                    done.expired += 1

    # --- 3. workdirs -------------------------------------------------------------------------
    def expire_workdirs(self, now: datetime, done: Round) -> None:
        days = self.policy.retention_days
        if days <= 0 or self.workdirs is None:
            return
        cutoff = now - timedelta(days=days)
        stored = exists().where(WorkdirUserRow.digest == WorkdirRow.digest)
        with self.readers() as session:
            candidates = session.scalars(
                select(WorkdirRow.digest)
                .where(WorkdirRow.created_at < cutoff, stored)
                .order_by(WorkdirRow.created_at)
                .limit(BATCH)
            ).all()
            if not candidates:
                return
            used = set(
                session.scalars(
                    select(JobRow.workdir_digest).where(
                        JobRow.workdir_digest.in_(candidates), _uses(cutoff)
                    )
                )
            )
        for digest in candidates:
            if digest not in used:
                self._remove_workdir(digest, cutoff, now, days, done)

    def _remove_workdir(
        self, digest: str, cutoff: datetime, now: datetime, days: float, done: Round
    ) -> None:
        """Forget the archive's uploaders, checked again in the statement (a job submitted with
        it since it was chosen keeps it), then remove its file."""
        assert self.workdirs is not None
        in_use = exists().where(JobRow.workdir_digest == digest, _uses(cutoff))
        with transaction(self.sessions) as session:
            old = exists().where(WorkdirRow.digest == digest, WorkdirRow.created_at < cutoff)
            gone = len(
                session.execute(
                    delete(WorkdirUserRow)
                    .where(WorkdirUserRow.digest == digest, old, ~in_use)
                    .returning(WorkdirUserRow.user_id)
                ).all()
            )
            if not gone:
                return
            audit.record(
                session,
                actor=SYSTEM,
                action="workdir.removed",
                target_type="workdir",
                target_id=digest,
                at=now,
                reason=f"retention: no job used it for {days:g} days",
                uploaders=gone,
            )
        try:
            os.unlink(archive_path(self.workdirs, digest))
        except FileNotFoundError:
            pass
        done.workdirs_removed += 1

    # --- 4. quota -----------------------------------------------------------------------------
    def enforce_quota(self, now: datetime, done: Round) -> None:
        quota = self.policy.quota_bytes
        if quota is None:
            return
        self._measure_running(done)
        with transaction(self.sessions) as session:
            totals = self._record_totals(session)
            over = {pid: held for pid, held in totals.items() if held > quota}
            if over:
                self._stop(session, over, quota, now, done)

    def _measure_running(self, done: Round) -> None:
        with self.readers() as session:
            running = session.execute(
                select(JobRow.id, JobRow.backend, JobRow.submitted_at, JobRow.preemptions).where(
                    JobRow.state.in_(ACTIVE)
                )
            ).all()
        self._measured = {r.id: self._measured.get(r.id, 0.0) for r in running}
        budget, sizes = MEASURE_BUDGET, []
        for job_id, partition, submitted_at, preemptions in sorted(
            running, key=lambda r: self._measured[r.id]
        ):
            if budget <= 0:
                break
            dirs = self._dirs(job_id, partition, submitted_at, preemptions)
            size, read = self._measure(dirs, min(MEASURE_LIMIT, budget))
            budget -= read
            self._measured[job_id] = time.monotonic()
            sizes.append({"id": job_id, "disk_bytes": size})
        if sizes:
            with transaction(self.sessions) as session:
                session.execute(update(JobRow), sizes)
            done.measured += len(sizes)

    @staticmethod
    def _record_totals(session: Session) -> dict[int, int]:
        """Each project's total, as its jobs were last measured, kept on the project (where
        submissions check it)."""
        totals = {
            pid: int(held or 0)
            for pid, held in session.execute(
                select(JobRow.project_id, func.sum(JobRow.disk_bytes))
                .where(JobRow.files_removed_at.is_(None))
                .group_by(JobRow.project_id)
            )
        }
        for pid, known in session.execute(select(ProjectRow.id, ProjectRow.disk_bytes)).all():
            if known != totals.get(pid, 0):
                session.execute(
                    update(ProjectRow)
                    .where(ProjectRow.id == pid)
                    .values(disk_bytes=totals.get(pid, 0))
                )
        return totals

    @staticmethod
    def _stop(
        session: Session, over: dict[int, int], quota: int, now: datetime, done: Round
    ) -> None:
        """Ask the running jobs of projects over the quota to stop: the controller forwards the
        cancel (as for any), and `stopped` makes it end failed with the reason."""
        names = dict(
            session.execute(
                select(ProjectRow.id, ProjectRow.name).where(ProjectRow.id.in_(list(over)))
            ).all()
        )
        for pid, held in over.items():
            done.over_quota[names.get(pid, str(pid))] = held
        rows = session.scalars(
            select(JobRow)
            .where(
                JobRow.project_id.in_(list(over)),
                JobRow.state.in_(ACTIVE),
                JobRow.cancel_requested_at.is_(None),
                JobRow.stop_reason.is_(None),
            )
            .with_for_update()
        ).all()
        for row in rows:
            have, limit = format_bytes_apart(over[row.project_id], quota)
            row.stop_reason = (
                f"{QUOTA_STOP}: {have} of {limit} (project {names.get(row.project_id)}'s jobs' "
                "outputs, logs and working copies on this server)"
            )
            row.cancel_requested_at = now
            row.reason = row.stop_reason  # what the job shows while it stops
            audit.record(
                session,
                actor=SYSTEM,
                action="job.quota_stop",
                target_type="job",
                target_id=row.id,
                at=now,
                reason=row.stop_reason,
            )
            done.stopped.append(row.id)

    # --- files --------------------------------------------------------------------------------
    def _dirs(
        self, job_id: int, partition: str, submitted_at: datetime, preemptions: int
    ) -> list[Path]:
        """The directories of every run of the job, where its backend says they are."""
        backend: Any = self.backends.get(partition)
        job_dir = getattr(backend, "job_dir", None)  # backends.base.RunDirectories
        if job_dir is None:
            return []
        return [job_dir(job_id, i) for i in run_instances(submitted_at, preemptions or 0)]

    @staticmethod
    def _measure(dirs: list[Path], limit: int) -> tuple[int, int]:
        """Bytes the directories hold on disk, and how many entries that read."""
        size = read = 0
        for directory in dirs:
            found = filetree.measure(directory, limit=limit, partial=True)
            size += found.disk_bytes
            read += found.entries
        return size, read
