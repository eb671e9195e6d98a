"""The controller: one level-triggered loop that moves jobs from what is wanted to what is.

Each pass reads the database, asks the backend, and writes back, in three steps:
observe (poll running jobs) -> cancel (forward cancel requests) -> admit (run the engine, launch).
A pass may crash at any line; the next one repairs, because every step starts from the database and
every backend call is idempotent. No transaction is held across a backend call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Backend, Capacity, Handle, LaunchSpec, Observation, Phase
from fabriek.core.errors import NetworkNotAllowed
from fabriek.core.identity import Network, NetworkPolicy, job_network
from fabriek.core.jobs import JobState, Resources
from fabriek.scheduling.engine import decide
from fabriek.scheduling.fairshare import DEFAULT_HALF_LIFE_S
from fabriek.scheduling.model import STARVING_AFTER_S, Decisions, Partition
from fabriek.server.controller.snapshot import (
    ACTIVE,
    Read,
    Static,
    partition_of,
    read_snapshot,
    read_static,
    recent_usage,
)
from fabriek.server.db.engine import transaction
from fabriek.server.db.models import JobRow, ProjectRow
from fabriek.server.services import audit
from fabriek.server.services.actors import SYSTEM
from fabriek.server.services.energy import record_energy
from fabriek.server.services.facility import account_job, forecast, get_facility
from fabriek.server.services.identities import identity_of
from fabriek.server.services.retention import Retention, stopped
from fabriek.server.services.transitions import transition_job
from fabriek.server.services.workdirs import archive_path

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
FULL_PASS_EVERY = 5.0
USAGE_EVERY = 60.0  # fair share changes over days: recent usage is read once a minute
FORECAST_HOURS = 8 * 24  # how far green scheduling looks: deadlines up to a week ahead
REQUEUED = "requeued after preemption: it keeps its place in the queue"
# Under a stream of wake-ups (news came while a pass ran), the least time between passes: the next
# pass then takes a batch of submissions at once instead of one or two.
BATCH_GAP = 0.025


@dataclass
class PassReport:
    """What one pass did and how long each step took (seconds)."""

    observed: int = 0
    finished: int = 0
    cancelled: int = 0
    admitted: int = 0
    preempted: int = 0
    requeued: int = 0
    pending: int = 0
    starting: int = 0
    # How soon to look again: a launched job's start is the next news, and the local machine
    # starts one in milliseconds; Slurm's take a scheduling cycle (and squeue is not free).
    look_again: float = float("inf")
    timings: dict[str, float] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        backend: Backend | None = None,
        backends: Mapping[str, Backend] | None = None,
        readers: sessionmaker[Session] | None = None,
        clock: Clock,
        workdirs: Path,
        interval: float = 1.0,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        starving_after_s: float | None = STARVING_AFTER_S,
        retention: Retention | None = None,
        networks: Mapping[str, NetworkPolicy] | None = None,
    ) -> None:
        """`networks`: each partition's network policy, as the operator set it in the
        partitions file (a partition without one: host, host)."""
        self.sessions = sessions
        self.retention = retention  # jobs' files and the disk quota, on a thread of its own
        self.readers = readers or sessions
        # Partition name -> the backend that runs it (the local machine, Slurm partitions).
        self.backends: dict[str, Backend] = dict(backends or {})
        if backend is not None:
            self.backends.setdefault(backend.name, backend)
        if not self.backends:
            raise ValueError("a controller needs at least one backend")
        self.networks: dict[str, NetworkPolicy] = dict(networks or {})
        self.clock = clock
        self.workdirs = workdirs
        self.interval = interval
        self.half_life_s = half_life_s
        self.starving_after_s = starving_after_s  # the engine's starvation guard (None: none)
        self._usage: dict[str, float] = {}
        self._usage_at = -USAGE_EVERY
        self._heads: set[int] = set()  # the jobs the pools' queues stopped at in the last pass
        self._static: Static | None = None  # pools and allocations, read on full passes
        self._forecast_values: tuple[float | None, ...] = ()
        self._forecast_hour: datetime | None = None
        self._forecast_at = -USAGE_EVERY
        self._freed = True  # resources were freed since the last full admission pass
        self._last_full_pass = 0.0
        self._seen_up_to = 0  # the highest pending job id an admission pass has looked at
        self._wake = threading.Event()
        self._only_submissions = True  # every wake since the last pass was a submission
        self._wakes = 0  # wake-ups since the last pass began
        self._wake_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None  # launches, for backends that take several

    # --- the loop -----------------------------------------------------------------------------
    def wake(self, *, submission: bool = False) -> None:
        """Run a pass now (called on a submission, a cancel, or a job's process ending).

        A pass woken only by submissions admits and skips observing and cancelling: nothing there
        changed, and under hundreds of submissions a second that halves the controller's work.
        """
        with self._wake_lock:
            self._only_submissions &= submission
            self._wakes += 1
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self.retention is not None:
            self.retention.wait(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            woken = self._wake.wait(delay)
            with self._wake_lock:
                self._wake.clear()
                admit_only = woken and self._only_submissions
                self._only_submissions = True
                self._wakes = 0
            if self._stop.is_set():
                break
            began = time.monotonic()
            try:
                report = self.run_pass(admit_only=admit_only)
            except Exception:  # a pass must never kill the loop: the next one repairs
                log.exception("controller pass failed; retrying")
                delay = self.interval
                continue
            # Under a storm of wake-ups (hundreds of submissions a second: several came while
            # this pass ran), rest as long as the pass took, and at least BATCH_GAP: the
            # controller then takes a small part of one core and admits in batches. A lone
            # submission, also one that came during the pass, waits no longer than the pass took.
            # Time spent waiting for a backend to take launches (Slurm's sbatch) does not count:
            # it used slurmctld, not this machine's CPU.
            took = time.monotonic() - began - report.timings.get("launch", 0.0)
            with self._wake_lock:
                storm = self._wakes > 1
            self._stop.wait(max(took, BATCH_GAP) if storm else took)
            # While a launched job has not started yet, look again soon: its start is the next news.
            delay = min(self.interval, report.look_again)

    # --- one pass -----------------------------------------------------------------------------
    def run_pass(self, *, admit_only: bool = False) -> PassReport:
        """One pass: observe, forward cancels, admit (or only admit, see `wake`)."""
        report = PassReport()
        steps = (
            (self._admit,)
            if admit_only
            else (
                self._observe,
                self._forward_cancels,
                self._admit,
                self._retain,
                self._keep_accounts,
            )
        )
        for step in steps:
            began = time.perf_counter()
            step(report)
            report.timings[step.__name__.lstrip("_")] = time.perf_counter() - began
        if report.admitted or report.finished or report.cancelled or report.preempted:
            log.info(
                "pass: %d admitted, %d finished, %d cancelling, %d preempted, %d requeued, "
                "%d pending (%s)",
                report.admitted,
                report.finished,
                report.cancelled,
                report.preempted,
                report.requeued,
                report.pending,
                ", ".join(f"{k} {v * 1000:.1f}ms" for k, v in report.timings.items()),
            )
        return report

    def _observe(self, report: PassReport) -> None:
        with self.readers() as session:
            rows = session.execute(
                select(JobRow.id, JobRow.handle, JobRow.state, JobRow.backend).where(
                    JobRow.state.in_(ACTIVE)
                )
            ).all()
        unlaunched = [job_id for job_id, handle, _, _ in rows if handle is None]
        for job_id in unlaunched:  # admitted, then a crash before the launch was recorded
            self._launch(job_id)
        by_backend: dict[str, dict[int, dict[str, object]]] = {}
        for job_id, handle, _, name in rows:
            if handle is not None:
                by_backend.setdefault(name, {})[job_id] = handle
        states = {job_id: state for job_id, _, state, _ in rows}
        observations: dict[int, Observation] = {}
        for name, handles in by_backend.items():  # one poll per backend for all its jobs
            backend = self.backends.get(name)
            if backend is None:
                log.error("jobs %s run on %r, which is not configured", sorted(handles), name)
                continue
            try:
                seen_here = backend.poll(handles)
            except Exception:  # one backend's trouble must not stop the others
                log.exception("cannot poll partition %s; trying again next pass", name)
                continue
            observations.update(seen_here)
            if any(seen.phase == Phase.STARTING for seen in seen_here.values()):
                report.look_again = min(report.look_again, _starting_poll(backend))
        report.observed = len(observations)
        for job_id, seen in observations.items():
            if seen.phase == Phase.STARTING:
                report.starting += 1
            elif seen.phase == Phase.RUNNING and states[job_id] == JobState.RUNNING.value:
                continue  # no news: no write
            else:
                try:
                    self._apply(job_id, seen, report)
                except Exception:  # one job's trouble must not stop the others
                    log.exception("cannot record what job %s did; trying again next pass", job_id)

    def _apply(self, job_id: int, seen: Observation, report: PassReport) -> None:
        with transaction(self.sessions) as session:
            # Locked: on PostgreSQL a cancel may be writing this row at the same time.
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is None or row.state not in ACTIVE:
                return
            now = self.clock()
            if (
                row.state == JobState.ADMITTED.value
                and seen.phase != Phase.LOST
                and seen.started_at
            ):
                transition_job(
                    session,
                    row,
                    JobState.RUNNING,
                    at=seen.started_at,
                    actor=SYSTEM.label,
                    reason=None,
                )
            if (
                seen.phase in (Phase.FINISHED, Phase.LOST)
                and row.preempt_requested_at is not None
                and row.cancel_requested_at is None
                and seen.outcome != JobState.SUCCEEDED
            ):
                self._requeue(session, row, now, seen)
                report.requeued += 1
                self._freed = True
            elif seen.phase == Phase.FINISHED and seen.outcome is not None:
                self._finish(session, row, seen, now)
                report.finished += 1
                self._freed = True
            elif seen.phase == Phase.LOST:
                cancelled = row.cancel_requested_at is not None
                target, reason = stopped(
                    row,
                    JobState.CANCELLED if cancelled else JobState.FAILED,
                    "cancelled on request" if cancelled else seen.reason,
                )
                transition_job(session, row, target, at=now, actor=SYSTEM.label, reason=reason)
                report.finished += 1
                self._freed = True

    def _finish(self, session: Session, row: JobRow, seen: Observation, now: datetime) -> None:
        usage = seen.usage
        fields: dict[str, object] = {"exit_code": seen.exit_code, "signal": seen.signal}
        if usage is not None:
            fields.update(
                wall_s=usage.wall_s,
                cpu_s=usage.cpu_s,
                max_rss_bytes=usage.max_rss_bytes,
                gpu_s=usage.wall_s * row.gpus * (row.nodes or 1),
            )
        record_energy(session, row, seen.energy)
        account_job(session, row)
        target = seen.outcome
        assert target is not None
        if row.state == JobState.ADMITTED.value and target != JobState.CANCELLED:
            target = JobState.FAILED  # it never started: e.g. its workdir could not be unpacked
        target, reason = stopped(row, target, seen.reason)  # by the system: failed, and why
        transition_job(
            session,
            row,
            target,
            at=seen.finished_at or now,
            actor=SYSTEM.label,
            reason=reason,
            **fields,
        )

    def _requeue(
        self, session: Session, row: JobRow, now: datetime, seen: Observation | None
    ) -> None:
        """A preempted job has stopped: back to pending, with its place in the queue (its
        submission time). The stopped run is not charged to its allocation: it ran on capacity
        lent to it, and lost its work unless it saved a checkpoint when asked to stop."""
        ran = seen.usage.wall_s if seen is not None and seen.usage is not None else None
        if seen is not None:  # the stopped run's energy was really used: it counts
            record_energy(session, row, seen.energy)
        transition_job(
            session,
            row,
            JobState.PREEMPTED,
            at=seen.finished_at if seen is not None and seen.finished_at else now,
            actor=SYSTEM.label,
            reason=(row.reason or "preempted")
            + (f" (stopped after {ran:.0f}s)" if ran is not None else ""),
        )
        transition_job(
            session,
            row,
            JobState.PENDING,
            at=now,
            actor=SYSTEM.label,
            reason=REQUEUED,
            admitted_at=None,
            started_at=None,
            handle=None,
            gpu_ids=None,
            placement=None,
            borrowed=False,
            preempt_requested_at=None,
            preemptions=row.preemptions + 1,
        )

    def _retain(self, report: PassReport) -> None:
        if self.retention is not None:  # returns at once: see services/retention.py
            self.retention.step(ended=report.finished > 0)

    def _keep_accounts(self, report: PassReport) -> None:
        """Backends with accounts of their own (Slurm's) keep them in step with the tenancy:
        each looks on a thread of its own, and only when something changed (returns at once)."""
        for backend in self.backends.values():
            keep = getattr(backend, "keep_accounts", None)  # e.g. SlurmBackend.keep_accounts
            if keep is not None:
                keep()

    def _forward_cancels(self, report: PassReport) -> None:
        """Cancels and preemptions alike: the backend stops the job (SIGTERM, the grace period,
        SIGKILL); the next polls see how it ended."""
        with self.readers() as session:
            rows = session.execute(
                select(JobRow.id, JobRow.handle, JobRow.backend).where(
                    JobRow.state.in_(ACTIVE),
                    (JobRow.cancel_requested_at.is_not(None))
                    | (JobRow.preempt_requested_at.is_not(None)),
                    JobRow.handle.is_not(None),
                )
            ).all()
        for job_id, handle, name in rows:
            try:
                self._backend(name).cancel(job_id, handle)  # idempotent: repeated until it ends
            except Exception:
                log.exception("cannot cancel job %s; trying again next pass", job_id)
        report.cancelled = len(rows)

    def _admit(self, report: PassReport) -> None:
        # Capacity only shrinks while no job ends: a pending job the last pass left waiting
        # behind its pool's blocked head still waits. Until resources are freed a pass need only
        # look at the heads and at jobs newer than those it has seen; at 10,000 waiting jobs that
        # is the difference between milliseconds and a tenth of a second per submission. A full
        # pass also runs every FULL_PASS_EVERY seconds: for jobs whose ids committed out of order
        # (possible on PostgreSQL), pools or allocations an operator changed, and jobs that have
        # waited past the starvation limit (they move to the front of their pool's queue).
        now_mono = time.monotonic()
        full = self._freed or now_mono - self._last_full_pass >= FULL_PASS_EVERY
        now = self.clock()
        began = time.perf_counter()
        partitions = self._partitions()
        with self.readers() as session:
            connection = session.connection()
            if now_mono - self._usage_at >= USAGE_EVERY:
                self._usage = recent_usage(connection, now=now, half_life_s=self.half_life_s)
                self._usage_at = now_mono
            if full or self._static is None:
                self._static = read_static(connection, now=now)
            read = read_snapshot(
                connection,
                static=self._static,
                partitions=partitions,
                now=now,
                usage=self._usage,
                after_id=0 if full else self._seen_up_to,
                heads=() if full else self._heads,
                forecast=self._forecast(session, now, now_mono),
                starving_after_s=self.starving_after_s,
            )
            if not full and any(
                job.allocation is not None and not self._static.knows(job.allocation)
                for job in read.snapshot.pending
            ):  # an allocation granted since the last full pass: read them again
                self._static = read_static(connection, now=now)
                read = read_snapshot(
                    connection,
                    static=self._static,
                    partitions=partitions,
                    now=now,
                    usage=self._usage,
                    after_id=self._seen_up_to,
                    heads=self._heads,
                    forecast=self._forecast(session, now, now_mono),
                    starving_after_s=self.starving_after_s,
                )
        report.timings["read"] = time.perf_counter() - began
        if full:
            self._freed, self._last_full_pass = False, now_mono
        pending = read.snapshot.pending
        if pending:
            self._seen_up_to = max(self._seen_up_to, pending[-1].id)
        report.pending = len(pending)
        if not pending:
            self._heads = set()
            return
        try:
            decisions = decide(read.snapshot)
        except Exception:
            if not read.snapshot.forecast:
                raise
            # Green planning must never stop admission: decide again without the forecast.
            log.exception("the engine failed with the carbon forecast; deciding without it")
            decisions = decide(replace(read.snapshot, forecast=()))
        for step, took in decisions.timings.items():
            report.timings[f"engine.{step}"] = took
        self._heads = set(decisions.heads.values())
        # Stamped when decided, not when the pass began reading (the read takes milliseconds).
        admitted = self._record_admissions(read, decisions, self.clock())
        self._record_preemptions(decisions, now, report)
        self._update_reasons(read, decisions)
        self._update_estimates(read, decisions)
        self._record_deferrals(read, decisions)
        began_launch = time.perf_counter()
        self._launch_all(admitted)
        report.timings["launch"] = time.perf_counter() - began_launch
        report.admitted = len(admitted)
        report.starting += len(admitted)
        for name in {partition for _, partition in admitted}:
            report.look_again = min(report.look_again, _starting_poll(self.backends[name]))

    def capacities(self) -> dict[str, Capacity]:
        """What each partition offers (its backend's capacity) with the operator's network
        policy for it: what submission and admission judge jobs by."""
        return {name: self._capacity(name, b) for name, b in self.backends.items()}

    def _capacity(self, name: str, backend: Backend) -> Capacity:
        capacity = backend.capacity()
        policy = self.networks.get(name)
        return capacity if policy is None else replace(capacity, network=policy)

    def _partitions(self) -> tuple[Partition, ...]:
        return tuple(partition_of(name, c) for name, c in self.capacities().items())

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise LookupError(f"partition {name!r} is not configured")
        return backend

    def _forecast(
        self, session: Session, now: datetime, now_mono: float
    ) -> tuple[tuple[float | None, ...], float]:
        """The grid's forecast carbon intensity for the next FORECAST_HOURS, read again each
        minute (and each new hour)."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        if self._forecast_hour != hour or now_mono - self._forecast_at >= USAGE_EVERY:
            try:
                facility = get_facility(session)
                values = forecast(session, facility, start=hour, hours=FORECAST_HOURS)
            except Exception:  # no forecast: flexible jobs run as soon as they can
                log.exception("cannot read the carbon forecast; green scheduling pauses")
                values = []
            self._forecast_values = tuple(values) if any(v is not None for v in values) else ()
            self._forecast_hour, self._forecast_at = hour, now_mono
        return self._forecast_values, hour.timestamp()

    def _record_deferrals(self, read: Read, decisions: Decisions) -> None:
        """Keep the start chosen for each job held back for a greener hour, and (once) what
        starting at once would have meant, for the carbon it saves."""
        changes = {
            job_id: window
            for job_id, window in decisions.deferrals.items()
            if job_id not in read.green_starts
            or abs(read.green_starts[job_id].timestamp() - window.start) >= 1
        }
        if not changes:
            return
        jobs = JobRow.__table__
        with transaction(self.sessions) as session:
            for job_id, window in changes.items():
                session.connection().execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.PENDING.value)
                    .values(green_start_at=datetime.fromtimestamp(window.start, UTC))
                )
                session.connection().execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.carbon_at_once_g.is_(None))
                    .values(carbon_at_once_g=window.now_intensity)
                )

    def _record_admissions(
        self, read: Read, decisions: Decisions, now: datetime
    ) -> list[tuple[int, str]]:
        """Admit in one transaction; each job gets its own GPUs (CUDA_VISIBLE_DEVICES)."""
        if not decisions.admissions:
            return []
        # The GPUs a backend hands out itself (the local machine's) are picked here; Slurm
        # picks its own.
        free = {}
        for name, backend in self.backends.items():
            taken = {gpu for ids in read.gpu_ids.get(name, {}).values() for gpu in ids}
            free[name] = [g for g in backend.capacity().gpu_ids if g not in taken]
        requests = {job.id: job.request for job in read.snapshot.pending}
        admitted: list[tuple[int, str]] = []  # job, partition
        with transaction(self.sessions) as session:
            for admission in decisions.admissions:
                row = session.get(JobRow, admission.job_id, with_for_update=True)
                if row is None or row.state != JobState.PENDING.value:
                    continue  # cancelled since the snapshot was taken
                partition = admission.placement.partition
                gpu_ids: list[int] = []
                if free[partition]:
                    gpus = requests[admission.job_id].gpus
                    if gpus > len(free[partition]):  # the engine counted the same GPUs: never
                        log.error("no free GPUs left for job %s; it waits", admission.job_id)
                        continue
                    gpu_ids, free[partition] = free[partition][:gpus], free[partition][gpus:]
                transition_job(
                    session,
                    row,
                    JobState.ADMITTED,
                    at=now,
                    actor=SYSTEM.label,
                    gpu_ids=gpu_ids,
                    borrowed=admission.borrowed,
                    estimated_start_at=None,
                    backend=partition,
                    placement=list(admission.placement.nodes),
                )
                admitted.append((row.id, partition))
        return admitted

    def _record_preemptions(self, decisions: Decisions, now: datetime, report: PassReport) -> None:
        """Ask the chosen jobs to stop; each is requeued when its process has ended."""
        if not decisions.preemptions:
            return
        chosen: list[tuple[int, dict[str, object] | None, str, str]] = []
        with transaction(self.sessions) as session:
            for preemption in decisions.preemptions:
                row = session.get(JobRow, preemption.job_id, with_for_update=True)
                if (
                    row is None
                    or row.state not in ACTIVE
                    or row.preempt_requested_at is not None
                    or row.cancel_requested_at is not None
                ):
                    continue
                row.preempt_requested_at = now
                row.reason = preemption.reason
                audit.record(
                    session,
                    actor=SYSTEM,
                    action="job.preempt",
                    target_type="job",
                    target_id=row.id,
                    at=now,
                    reason=preemption.reason,
                )
                chosen.append((row.id, row.handle, preemption.reason, row.backend))
        for job_id, handle, why, name in chosen:
            log.info("preempting job %s: %s", job_id, why)
            if handle is None:  # admitted, launch not recorded: never start it, or stop it
                self._launch(job_id)
                continue
            try:
                self._backend(name).cancel(job_id, handle)  # repeated until it ends
            except Exception:
                log.exception("cannot stop job %s; trying again next pass", job_id)
        report.preempted = len(chosen)

    def _requeue_unlaunched(self, job_id: int) -> None:
        with transaction(self.sessions) as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is not None and row.state == JobState.ADMITTED.value and row.handle is None:
                self._requeue(session, row, self.clock(), None)
                self._freed = True

    def _update_reasons(self, read: Read, decisions: Decisions) -> None:
        """Write the waiting reasons that changed: one UPDATE per distinct reason, not per job."""
        reasons = decisions.reasons
        for job_id, why in read.out_of_period.items():  # say which end of the period, not "0 left"
            if job_id in reasons:
                reasons[job_id] = why
        known = read.reasons
        by_reason: dict[str, list[int]] = {}
        for job_id, reason in reasons.items():
            if known.get(job_id) != reason:
                by_reason.setdefault(reason, []).append(job_id)
        if not by_reason:
            return
        jobs = JobRow.__table__
        with transaction(self.sessions) as session:
            for reason, ids in by_reason.items():
                for start in range(0, len(ids), 5000):  # within every database's parameter limit
                    session.connection().execute(
                        update(jobs)
                        # Only while still pending: never overwrite what a transition wrote meanwhile.
                        .where(
                            jobs.c.id.in_(ids[start : start + 5000]),
                            jobs.c.state == JobState.PENDING.value,
                        )
                        .values(reason=reason)
                    )

    def _update_estimates(self, read: Read, decisions: Decisions) -> None:
        """The start reserved for each blocked head (EASY backfill keeps it); others none. Written
        when it moved by a minute or more: estimates shift a little every pass."""
        changes: dict[int, datetime | None] = {}
        pending = {job.id for job in read.snapshot.pending}
        for job_id in read.estimates.keys() | (decisions.reservations.keys() & pending):
            known = read.estimates.get(job_id)
            at = decisions.reservations.get(job_id)
            estimate = datetime.fromtimestamp(at, UTC) if at is not None else None
            if estimate is None or known is None:
                if estimate != known:
                    changes[job_id] = estimate
            elif abs((estimate - known).total_seconds()) >= 60:
                changes[job_id] = estimate
        if not changes:
            return
        jobs = JobRow.__table__
        with transaction(self.sessions) as session:
            for job_id, estimate in changes.items():
                session.connection().execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.PENDING.value)
                    .values(estimated_start_at=estimate)
                )

    def _launch_all(self, admitted: list[tuple[int, str]]) -> None:
        """Launch the jobs just admitted: their rows read in one query, their handles written in
        one transaction. A backend whose submissions mostly wait on something else (Slurm: each
        is an sbatch call answered by slurmctld) takes up to its `concurrent_submissions` at
        once; the others one by one. A crash before the handles are written leaves admitted
        jobs without one, which the next pass launches again (submit is idempotent)."""
        if not admitted:
            return
        ready: list[tuple[Backend, LaunchSpec]] = []
        special: list[int] = []
        with self.readers() as session:
            for row in session.scalars(
                select(JobRow).where(JobRow.id.in_([job_id for job_id, _ in admitted]))
            ):
                if row.state != JobState.ADMITTED.value:
                    continue
                backend = self.backends.get(row.backend)
                if backend is None or row.cancel_requested_at or row.preempt_requested_at:
                    special.append(row.id)  # the careful way, one by one
                    continue
                try:
                    spec = launch_spec(row, self.workdirs, session, self._network(row.backend))
                except NetworkNotAllowed:
                    special.append(row.id)  # a lock set since it was submitted: see _launch
                    continue
                ready.append((backend, spec))
        for job_id in special:
            self._launch(job_id)

        def submit(item: tuple[Backend, LaunchSpec]) -> tuple[int, Handle | Exception]:
            backend, spec = item
            try:
                return spec.job_id, backend.submit(spec)
            except Exception as exc:
                log.exception("launching job %s failed", spec.job_id)
                return spec.job_id, exc

        wide, narrow = [], []
        for item in ready:
            (wide if getattr(item[0], "concurrent_submissions", 1) > 1 else narrow).append(item)
        if len(wide) == 1:
            narrow, wide = wide + narrow, []
        results = list(self._launcher().map(submit, wide)) if wide else []
        results += [submit(item) for item in narrow]
        networks = {spec.job_id: spec.network.value for _, spec in ready}
        handles = [
            {"id": job_id, "handle": h, "network": networks[job_id]}
            for job_id, h in results
            if isinstance(h, dict)
        ]
        if handles:
            with transaction(self.sessions) as session:
                session.execute(update(JobRow), handles)  # by primary key, one statement
        for job_id, outcome in results:
            if isinstance(outcome, Exception):
                self._end_unlaunched(
                    job_id, JobState.FAILED, f"the backend could not launch it: {outcome}"
                )

    def _launcher(self) -> ThreadPoolExecutor:
        if self._pool is None:
            width = max(
                (getattr(b, "concurrent_submissions", 1) for b in self.backends.values()),
                default=1,
            )
            self._pool = ThreadPoolExecutor(max(2, width), thread_name_prefix="launch")
        return self._pool

    def _launch(self, job_id: int) -> None:
        """Hand an admitted job to the backend, then record the handle. Safe to repeat after a crash."""
        with self.readers() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.state != JobState.ADMITTED.value:
                return
            cancelled = row.cancel_requested_at is not None
            preempted = row.preempt_requested_at is not None
            where = row.backend
            refused = None
            try:
                spec = launch_spec(row, self.workdirs, session, self._network(where))
            except NetworkNotAllowed as exc:  # what it asked for is more than allowed now
                refused = f"not started: {exc.message}"
                spec = launch_spec(row, self.workdirs, session)  # to find an earlier launch
            backend = self.backends.get(where)
        if backend is None:
            self._end_unlaunched(
                job_id, JobState.FAILED, f"partition {where!r} is no longer configured"
            )
            return
        if refused is not None and not self._launched_before(backend, spec):
            # A job that runs keeps its network; one that has not started never gets more
            # than its project and partition allow now.
            self._end_unlaunched(job_id, JobState.FAILED, refused)
            return
        if (cancelled or preempted) and self._launched_before(backend, spec):
            # Its launch went out before a crash lost the handle: adopt it and stop it; the
            # passes that observe it record how it ended (cancelled, or requeued).
            handle = backend.submit(spec)  # idempotent: adopts, starts nothing new
            self._record_launch(job_id, handle, spec)
            backend.cancel(job_id, handle)
            return
        if cancelled:  # asked to stop between admission and launch: never start it
            self._end_unlaunched(job_id, JobState.CANCELLED, "cancelled before it started")
            return
        if preempted:
            self._requeue_unlaunched(job_id)
            return
        try:
            handle = backend.submit(spec)
        except Exception as exc:
            log.exception("launching job %s failed", job_id)
            self._end_unlaunched(job_id, JobState.FAILED, f"the backend could not launch it: {exc}")
            return
        self._record_launch(job_id, handle, spec)

    def _network(self, partition: str) -> NetworkPolicy:
        return self.networks.get(partition, NetworkPolicy())

    def _record_launch(self, job_id: int, handle: Handle, spec: LaunchSpec) -> None:
        """Keep the handle, and the network the job was launched with (what it got)."""
        with transaction(self.sessions) as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(handle=handle, network=spec.network.value)
            )

    @staticmethod
    def _launched_before(backend: Backend, spec: LaunchSpec) -> bool:
        check = getattr(backend, "was_launched", None)  # backends.base.LaunchRecord
        return bool(check(spec)) if check is not None else False

    def _end_unlaunched(self, job_id: int, target: JobState, reason: str) -> None:
        with transaction(self.sessions) as session:
            row = session.get(JobRow, job_id, with_for_update=True)
            if row is not None and row.state == JobState.ADMITTED.value:
                transition_job(
                    session, row, target, at=self.clock(), actor=SYSTEM.label, reason=reason
                )
                self._freed = True


def _starting_poll(backend: Backend) -> float:
    """How soon to poll again while one of the backend's jobs is starting (seconds)."""
    return float(getattr(backend, "starting_poll_seconds", 0.02))


def launch_spec(
    row: JobRow,
    workdirs: Path,
    session: Session | None = None,
    network: NetworkPolicy | None = None,
) -> LaunchSpec:
    """What the backend needs to start the job in `row` (as its project's identity, where
    `session` can tell it). With its partition's `network` policy, its network is decided
    now (core.identity.job_network: what it asked for, else the partition's default lowered
    to the project's lock), and NetworkNotAllowed raised where the project or the partition
    allows it no network it may have now; without, it is what the row holds (host if none)."""
    project = session.get(ProjectRow, row.project_id) if session is not None else None
    got = Network(row.network) if row.network else None  # asked for, or got on a first run
    if network is not None:
        lock = project.network_limit if project is not None else None
        got = job_network(
            got,
            partition=row.backend,
            policy=network,
            project=project.name if project is not None else "",
            lock=Network(lock) if lock else None,
        )
    return LaunchSpec(
        job_id=row.id,
        name=row.name,
        argv=list(row.argv),
        env=dict(row.env),
        resources=Resources(row.cpus, row.memory_bytes, row.gpus),
        gpu_ids=tuple(row.gpu_ids or ()),
        time_limit_s=row.time_limit_s,
        workdir_archive=archive_path(workdirs, row.workdir_digest) if row.workdir_digest else None,
        # Each run of a requeued job is a new launch, with its own directory and log.
        instance=str(int(row.submitted_at.timestamp() * 1_000_000))
        + (f"r{row.preemptions}" if row.preemptions else ""),
        nodes=row.nodes or 1,
        identity=identity_of(project) if project is not None else None,
        network=got or Network.HOST,
    )


__all__ = ["Controller", "PassReport", "launch_spec"]
