"""Submitting, reading and cancelling jobs, as a user; the controller moves them on from there."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    bindparam,
    cast,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from fabriek.backends.base import Capacity
from fabriek.core.errors import (
    BeyondGuarantee,
    Conflict,
    Forbidden,
    InvalidRequest,
    NetworkNotAllowed,
    NotFound,
    ResourcesUnavailable,
)
from fabriek.core.identity import Network, NetworkPolicy, job_network, spelled
from fabriek.core.jobs import (
    DEFAULT_MEMORY_BYTES,
    MAX_PRIORITY,
    ComponentEnergy,
    Job,
    JobEvent,
    JobRequest,
    JobState,
    Resources,
    flexible_deadline,
    validate_request,
)
from fabriek.core.units import format_bytes_apart
from fabriek.scheduling.engine import most_guaranteed
from fabriek.scheduling.model import Request
from fabriek.server.controller.snapshot import partition_of, read_pools
from fabriek.server.db.models import (
    AllocationRow,
    JobEventRow,
    JobRow,
    PoolRow,
    ProjectMemberRow,
    ProjectRow,
    UserRow,
)
from fabriek.server.services import allocations, audit, retention
from fabriek.server.services.actors import Actor
from fabriek.server.services.tenancy import managed_project_ids, visible_project_ids
from fabriek.server.services.transitions import record_submission, transition_job
from fabriek.server.services.workdirs import check_workdir

QUEUED_REASON = "queued: waiting for the controller's next pass"
_JOBS = JobRow.__table__
_PROJECTS = ProjectRow.__table__
_MEMBERS = ProjectMemberRow.__table__
_INSERT_JOB = insert(_JOBS).returning(
    _JOBS.c.id
)  # built once: building it costs more than running it


@cache
def _insert_as_member(dialect: str) -> Insert:
    """INSERT INTO jobs ... SELECT ... FROM the project, joined with the submitter's membership:
    on the usual path (a member submits) one statement finds the project, checks the membership
    and writes the job. PostgreSQL types the parameters of a SELECT list as text, so there they
    are cast to the columns' types (SQLite must not cast: CAST(text AS JSON) is a number there)."""
    columns = [c for c in _JOBS.columns if c.key not in ("id", "project_id")]
    params = [bindparam(c.key, type_=c.type) for c in columns]
    if dialect == "postgresql":
        params = [cast(p, c.type) for p, c in zip(params, columns, strict=True)]  # type: ignore[misc]
    member = (_MEMBERS.c.project_id == _PROJECTS.c.id) & (
        _MEMBERS.c.user_id == bindparam("member_id")
    )
    source = (
        select(*params, _PROJECTS.c.id)
        .select_from(_PROJECTS.join(_MEMBERS, member))
        .where(_PROJECTS.c.name == bindparam("project_name"))
    )
    return (
        insert(_JOBS)
        .from_select([c.key for c in columns] + ["project_id"], source)
        .returning(_JOBS.c.id, _JOBS.c.project_id)
    )


def submit_job(
    session: Session,
    *,
    actor: Actor,
    request: JobRequest,
    partitions: Mapping[str, Capacity],
    now: datetime,
    require_allocation: bool = False,
    disk_quota_bytes: int | None = None,
) -> Job:
    """Queue a job. `partitions` is what the factory has: a job that fits none of them could
    never run. With `require_allocation`, a GPU job must name the allocation it is charged to.
    A project whose jobs hold `disk_quota_bytes` or more gets no new ones. A job that asks for
    more network than its project's lock, or than the partition it names (else every
    partition) allows, is refused (NetworkNotAllowed)."""
    if not request.memory_given:
        request = fit_default_memory(request, partitions)
    validate_request(
        name=request.name,
        argv=request.argv,
        resources=request.resources,
        time_limit_s=request.time_limit_s,
        env=request.env,
        nodes=request.nodes,
        partition=request.partition,
    )
    backend = _check_fits(request, partitions)
    if not -MAX_PRIORITY <= request.priority <= MAX_PRIORITY:
        raise InvalidRequest(
            f"the priority must be from -{MAX_PRIORITY} to {MAX_PRIORITY}, got {request.priority}"
        )
    deadline = flexible_deadline(request, now)
    if request.priority > 0 and not actor.is_operator:
        raise Forbidden("only operators raise a job's priority above 0; lower ones are yours")
    if require_allocation and request.resources.gpus > 0 and request.allocation_id is None:
        raise InvalidRequest(
            "GPU jobs on this factory are charged to an allocation: add --allocation ID "
            "(see `fabriek allocation list`)"
        )
    project = request.project
    if project is None:
        project = default_project(session, actor=actor)
    elif not project.isprintable() or len(project) > 128:
        raise InvalidRequest(f"invalid project name {project!r}")
    if request.workdir_digest is not None:
        check_workdir(session, actor=actor, digest=request.workdir_digest)
    row = JobRow(
        name=request.name,
        user_id=actor.user_id,
        state=JobState.PENDING.value,
        argv=list(request.argv),
        env=dict(request.env),
        cpus=request.resources.cpus,
        memory_bytes=request.resources.memory_bytes,
        gpus=request.resources.gpus,
        time_limit_s=request.time_limit_s,
        workdir_digest=request.workdir_digest,
        backend=backend,
        submitted_at=now,
        reason=QUEUED_REASON,
        # Work outside any allocation runs on capacity lent to it, and yields it when a pool
        # needs its guarantee back: it is preemptible, asked or not.
        preemptible=request.preemptible
        or (request.allocation_id is None and request.resources.gpus > 0),
        borrowed=False,
        preemptions=0,
        priority=request.priority,
        deadline=deadline,
        nodes=request.nodes,
        partition=request.partition,
        placement=None,
        network=None if request.network is None else request.network.value,
    )
    # Prepared Core statements, not the ORM's unit of work: submission is the API's hottest write.
    values = {
        c.key: getattr(row, c.key) for c in _JOBS.columns if c.key not in ("id", "project_id")
    }
    connection = session.connection()
    found = connection.execute(
        _insert_as_member(connection.dialect.name),
        {**values, "member_id": actor.user_id, "project_name": project},
    ).first()
    if found is not None:
        row.id, row.project_id = found
    else:  # not a member: an operator may submit anyway; anyone else gets the reason
        row.project_id, _ = _project_for(session, actor=actor, name=project)
        row.id = connection.execute(
            _INSERT_JOB, {**values, "project_id": row.project_id}
        ).scalar_one()
    retention.check_quota(  # refused here, the whole submission rolls back
        session, project_id=row.project_id, project=project, quota_bytes=disk_quota_bytes
    )
    where = partitions if request.partition is None else {backend: partitions[backend]}
    if request.network not in (None, Network.NONE) or (
        request.network is None and any(c.network.least != Network.NONE for c in where.values())
    ):  # refused here, the whole submission rolls back
        _check_project_lock(
            session, request, project_id=row.project_id, project=project, partitions=where
        )
    pool = None
    if request.allocation_id is not None:  # refused here, the whole submission rolls back
        held = allocations.hold(
            session,
            allocation_id=request.allocation_id,
            project_id=row.project_id,
            project=project,
            gpus=request.resources.gpus * request.nodes,
            time_limit_s=request.time_limit_s,
            now=now,
        )
        row.allocation_id, row.hold_gpu_hours = request.allocation_id, held
        pool = session.scalar(
            select(PoolRow.name)
            .join(AllocationRow, AllocationRow.pool_id == PoolRow.id)
            .where(AllocationRow.id == request.allocation_id)
        )
        if not row.preemptible and request.resources.gpus > 0 and pool is not None:
            _check_within_guarantee(session, request, pool=pool, partitions=partitions)
        connection.execute(
            update(_JOBS)
            .where(_JOBS.c.id == row.id)
            .values(allocation_id=request.allocation_id, hold_gpu_hours=held)
        )
    record_submission(session, row, actor=actor.label)
    audit.record(
        session,
        actor=actor,
        action="job.submit",
        target_type="job",
        target_id=row.id,
        at=now,
        project=project,
        name=request.name,
        **({} if request.network is None else {"network": request.network.value}),
    )
    return to_job(row, project=project, user=actor.name, pool=pool)


def _check_project_lock(
    session: Session,
    request: JobRequest,
    *,
    project_id: int,
    project: str,
    partitions: Mapping[str, Capacity],
) -> None:
    """Refuse a job its project's lock (an operator's) keeps from running: one that asks for
    more network than the lock; one that asks for none where none of `partitions` (those it
    may run on) can hold a job to the lock."""
    found = session.scalar(select(ProjectRow.network_limit).where(ProjectRow.id == project_id))
    if found is None:
        return
    lock = Network(found)
    if request.network is not None:
        job_network(
            request.network,
            partition=request.partition or "",
            policy=NetworkPolicy(),  # the partitions' limits were checked before
            project=project,
            lock=lock,
        )
    elif not any(lock.rank >= c.network.least.rank for c in partitions.values()):
        offered = ", ".join(f"{n} {spelled(c.network.offers)}" for n, c in partitions.items())
        raise NetworkNotAllowed(
            f"project {project!r} is locked to network {lock.value} by an operator, and no "
            f"partition it may run on can hold a job to that (they offer: {offered})",
            project=project,
            lock=lock.value,
        )


def fit_default_memory(request: JobRequest, partitions: Mapping[str, Capacity]) -> JobRequest:
    """A request that named no memory asks for DEFAULT_MEMORY_BYTES, or for all a node has where
    the partition it names (else the largest partition) offers less."""
    if request.partition is not None:
        candidates = [partitions[request.partition]] if request.partition in partitions else []
    else:
        candidates = list(partitions.values())
    if not candidates:
        return request  # _check_fits says why it cannot run
    most = max(c.resources.memory_bytes for c in candidates)
    r = request.resources
    return replace(request, resources=Resources(r.cpus, min(DEFAULT_MEMORY_BYTES, most), r.gpus))


def _check_fits(request: JobRequest, partitions: Mapping[str, Capacity]) -> str:
    """Where the job could run: the partition it names, or the only one; "" while the engine
    may choose among several. Raises when no partition could ever hold it."""
    if request.partition is not None:
        if request.partition not in partitions:
            known = ", ".join(sorted(partitions)) or "none"
            raise InvalidRequest(
                f"there is no partition {request.partition!r} (partitions: {known})"
            )
        candidates = {request.partition: partitions[request.partition]}
        if request.network is not None:
            job_network(
                request.network,
                partition=request.partition,
                policy=candidates[request.partition].network,
                project=request.project or "",
                lock=None,  # the project's is checked once the project is known
            )
    else:
        candidates = _allowing(request.network, partitions)
    problems = [_why_not(request, name, cap) for name, cap in candidates.items()]
    if all(problems):
        narrowed = request.partition is None and len(candidates) < len(partitions)
        if len(problems) == 1 and not narrowed:
            raise ResourcesUnavailable(f"{problems[0]}; it could never run")
        which = "partition"
        if narrowed and request.network is not None:
            which = f"partition that offers network {request.network.value}"
        raise ResourcesUnavailable(
            f"it fits no {which} and could never run: " + "; ".join(problems)
        )
    if request.partition is not None:
        return request.partition
    return next(iter(partitions)) if len(partitions) == 1 else ""


def _allowing(network: Network | None, partitions: Mapping[str, Capacity]) -> dict[str, Capacity]:
    """The partitions that offer `network` (all where it is None); raises NetworkNotAllowed,
    naming what each offers, where none does."""
    if network is None:
        return dict(partitions)
    allowing = {n: c for n, c in partitions.items() if network in c.network.offers}
    if not allowing and partitions:
        offered = ", ".join(f"{n} {spelled(c.network.offers)}" for n, c in partitions.items())
        raise NetworkNotAllowed(
            f"no partition offers network {network.value} (they offer: {offered}); ask for "
            "one they offer",
            network=network.value,
        )
    return allowing


def _check_within_guarantee(
    session: Session, request: JobRequest, *, pool: str, partitions: Mapping[str, Capacity]
) -> None:
    """Refuse a job that may not be preempted and needs more GPUs than `pool`'s whole guarantee
    on every GPU type it may run on: only preemptible jobs borrow beyond it, so it would wait for
    ever, holding its allocation's GPU-hours (the admission cycle would set it aside with the
    same judgement, scheduling.engine.most_guaranteed)."""
    pools, _ = read_pools(session.connection())
    shape = Request(
        request.resources.gpus,
        request.resources.cpus,
        request.resources.memory_bytes,
        request.nodes,
        None,
        float(request.time_limit_s),
        request.partition,
    )
    engine_partitions = [partition_of(name, capacity) for name, capacity in partitions.items()]
    most = most_guaranteed(shape, pool, engine_partitions, pools)
    if shape.gpus <= most:
        return
    fewer = f"ask for at most {most} GPUs; or " if most > 0 else ""
    raise BeyondGuarantee(
        f"the job asks for {shape.gpus} GPUs, more than pool {pool}'s whole guarantee ({most} "
        "GPUs), and only preemptible jobs may go beyond it: it could never start. Submit it "
        "with --preemptible (it may then borrow idle GPUs, and is stopped and requeued when "
        f"their pool needs them back); or {fewer}charge it to an allocation in a pool with a "
        "larger guarantee"
    )


def _why_not(request: JobRequest, name: str, capacity: Capacity) -> str | None:
    want, has = request.resources, capacity.resources
    where = "this machine" if name == "local" else f"partition {name}"
    if request.nodes > capacity.nodes:
        return f"the job asks for {request.nodes} nodes but {where} has {capacity.nodes}"
    per = " per node" if request.nodes > 1 or capacity.nodes > 1 else ""
    for label, asked, offered in (("CPUs", want.cpus, has.cpus), ("GPUs", want.gpus, has.gpus)):
        if asked > offered:
            return f"the job asks for {asked} {label}{per} but {where} has {offered}"
    if want.memory_bytes > has.memory_bytes:
        want_text, has_text = format_bytes_apart(want.memory_bytes, has.memory_bytes)
        return f"the job asks for {want_text} of memory{per} but {where} offers {has_text}"
    return None


def default_project(session: Session, *, actor: Actor) -> str:
    """The project a submission that names none runs in: the submitter's only project, else
    `default` if they are a member of it (as before projects could be left out); otherwise
    the error names their projects."""
    mine = sorted(
        session.scalars(
            select(ProjectRow.name)
            .join(ProjectMemberRow, ProjectMemberRow.project_id == ProjectRow.id)
            .where(ProjectMemberRow.user_id == actor.user_id)
        )
    )
    if len(mine) == 1:
        return mine[0]
    if "default" in mine or (not mine and actor.is_operator):  # operators may submit anywhere
        return "default"
    if not mine:
        raise InvalidRequest(
            "you are not a member of any project yet; ask a project's manager to add you "
            "(`fabriek project add-member PROJECT YOU`)"
        )
    raise InvalidRequest(
        f"you are a member of several projects ({', '.join(mine)}): choose one with "
        "--project NAME, or set your default with `fabriek config set project NAME`"
    )


# The project by name, with the actor's membership of it (NULL if none); a Core statement built
# once, because every submission asks it.
_PROJECT_FOR = (
    select(_PROJECTS.c.id, _PROJECTS.c.name, _MEMBERS.c.user_id)
    .select_from(
        _PROJECTS.outerjoin(
            _MEMBERS,
            (_MEMBERS.c.project_id == _PROJECTS.c.id)
            & (_MEMBERS.c.user_id == bindparam("user_id")),
        )
    )
    .where(_PROJECTS.c.name == bindparam("name"))
)


def _project_for(session: Session, *, actor: Actor, name: str) -> tuple[int, str]:
    """(id, name) of the project `name` in which the actor may submit."""
    found = (
        session.connection().execute(_PROJECT_FOR, {"user_id": actor.user_id, "name": name}).first()
    )
    if found is None:
        raise NotFound(f"no project named {name!r}")
    project_id, project_name, member = found
    if member is None and not actor.is_operator:
        if project_id in _managed_projects(session, actor):
            raise Forbidden(
                f"you manage project {name!r} through its organisation but are not a member of "
                "it; add yourself to submit jobs"
            )
        raise NotFound(f"no project named {name!r}")  # someone else's: as if absent
    return project_id, project_name


def _managed_projects(session: Session, actor: Actor) -> set[int]:
    return set(session.scalars(managed_project_ids(actor)))


def visible_jobs(actor: Actor) -> ColumnElement[bool]:
    """A filter on jobs: those of the actor's projects and of the projects of organisations the
    actor owns or manages (all of them for an operator)."""
    if actor.is_operator:
        return true()
    return JobRow.project_id.in_(visible_project_ids(actor))


@dataclass(frozen=True, slots=True)
class JobFilters:
    """Which jobs a listing shows: of a project, of a user, of a name (`*` matches any text),
    submitted in [since, until)."""

    project: str | None = None
    user: str | None = None
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        for moment in (self.since, self.until):
            if moment is not None and not _in_utc_range(moment):
                raise InvalidRequest(
                    f"{moment.isoformat()} is outside the times fabriek keeps (years 1-9999 UTC)"
                )
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidRequest(
                f"the time range is empty: since {self.since.isoformat()} is not before "
                f"until {self.until.isoformat()}"
            )
        conditions: list[ColumnElement[bool]] = []
        if self.project is not None:
            conditions.append(ProjectRow.name == self.project)
        if self.user is not None:
            conditions.append(UserRow.name == self.user)
        if self.name is not None:
            pattern = self.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(JobRow.name.like(pattern.replace("*", "%"), escape="\\"))
        if self.since is not None:
            conditions.append(JobRow.submitted_at >= self.since)
        if self.until is not None:
            conditions.append(JobRow.submitted_at < self.until)
        return conditions


def _in_utc_range(moment: datetime) -> bool:
    """Whether `moment` is a time in UTC at all (0001-01-01T00:00+14:00 is not: the database
    layer's conversion overflowed into a 500, found in review)."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def list_jobs(
    session: Session,
    *,
    actor: Actor,
    states: Sequence[JobState] = (),
    limit: int = 100,
    filters: JobFilters = JobFilters(),  # frozen: one shared default is safe
) -> list[Job]:
    return list(iter_jobs(session, actor=actor, states=states, limit=limit, filters=filters))


def iter_jobs(
    session: Session,
    *,
    actor: Actor,
    states: Sequence[JobState] = (),
    limit: int = 100,
    filters: JobFilters = JobFilters(),
) -> Iterator[Job]:
    """As list_jobs, a few rows at a time: a job's command and environment may hold a MiB, so a
    caller that stops early (a bounded answer) never holds all `limit` of them."""
    query = (
        _with_names(select(JobRow, ProjectRow.name, UserRow.name, PoolRow.name))
        .where(visible_jobs(actor), *filters.where())
        .order_by(JobRow.id.desc())
        .limit(limit)
        .execution_options(yield_per=32)
    )
    if states:
        query = query.where(JobRow.state.in_([s.value for s in states]))
    for row, p, u, pool in session.execute(query):
        yield to_job(row, project=p, user=u, pool=pool)


def _with_names(query: Select[Any]) -> Select[Any]:
    """Join a job to the names of its project, user and (through its allocation) pool."""
    return (
        query.join(ProjectRow, ProjectRow.id == JobRow.project_id)
        .join(UserRow, UserRow.id == JobRow.user_id)
        .outerjoin(AllocationRow, AllocationRow.id == JobRow.allocation_id)
        .outerjoin(PoolRow, PoolRow.id == AllocationRow.pool_id)
    )


def _load(
    session: Session, *, actor: Actor, job_id: int, for_update: bool = False
) -> tuple[JobRow, str, str, str | None]:
    query = _with_names(select(JobRow, ProjectRow.name, UserRow.name, PoolRow.name)).where(
        JobRow.id == job_id, visible_jobs(actor)
    )
    if for_update:  # the controller may be moving this job at the same moment (PostgreSQL)
        query = query.with_for_update(of=JobRow)
    found = session.execute(query).first()
    if found is None:  # another tenant's job is indistinguishable from no job
        raise NotFound(f"no job {job_id}")
    return found[0], found[1], found[2], found[3]


def get_job(session: Session, *, actor: Actor, job_id: int, with_events: bool = True) -> Job:
    row, project, user, pool = _load(session, actor=actor, job_id=job_id)
    events: tuple[JobEvent, ...] = ()
    if with_events:
        events = tuple(
            JobEvent(
                e.at,
                JobState(e.from_state) if e.from_state else None,
                JobState(e.to_state),
                e.actor,
                e.reason,
            )
            for e in session.scalars(
                select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
            )
        )
    position = None
    if row.state == JobState.PENDING.value:  # older jobs waiting in the same pool
        same_pool = (
            JobRow.allocation_id.is_(None)
            if row.allocation_id is None
            else JobRow.allocation_id.in_(
                select(AllocationRow.id).where(
                    AllocationRow.pool_id
                    == select(AllocationRow.pool_id)
                    .where(AllocationRow.id == row.allocation_id)
                    .scalar_subquery()
                )
            )
        )
        position = session.scalar(
            select(func.count()).where(
                JobRow.state == JobState.PENDING.value,
                (JobRow.submitted_at < row.submitted_at)
                | ((JobRow.submitted_at == row.submitted_at) & (JobRow.id < row.id)),
                same_pool,
            )
        )
    return to_job(
        row, project=project, user=user, pool=pool, events=events, queue_position=position
    )


def job_row_for_files(session: Session, *, actor: Actor, job_id: int) -> JobRow:
    """The row behind a job this actor may read, for its logs and outputs."""
    return _load(session, actor=actor, job_id=job_id)[0]


def cancel_job(session: Session, *, actor: Actor, job_id: int, now: datetime) -> Job:
    """Cancel a job: at once if it waits; through the controller and its backend if it runs.
    Asking again while it stops changes nothing (and is audited once)."""
    row, project, user, pool = _load(session, actor=actor, job_id=job_id, for_update=True)
    state = JobState(row.state)
    if state.is_final:
        raise Conflict(f"job {job_id} has already finished ({state.value})")
    if state == JobState.PENDING:
        transition_job(
            session,
            row,
            JobState.CANCELLED,
            at=now,
            actor=actor.label,
            reason="cancelled before it started",
        )
    elif row.cancel_requested_at is None:
        row.cancel_requested_at = now
        row.reason = "cancelling: asked to stop, waiting for it to end"
    else:  # asked before: nothing changes, and nothing is audited again
        return to_job(row, project=project, user=user, pool=pool)
    audit.record(
        session, actor=actor, action="job.cancel", target_type="job", target_id=job_id, at=now
    )
    return to_job(row, project=project, user=user, pool=pool)


def to_job(
    row: JobRow,
    *,
    project: str,
    user: str,
    pool: str | None = None,
    events: tuple[JobEvent, ...] = (),
    queue_position: int | None = None,
) -> Job:
    return Job(
        id=row.id,
        name=row.name,
        project=project,
        user=user,
        state=JobState(row.state),
        argv=list(row.argv),
        resources=Resources(row.cpus, row.memory_bytes, row.gpus),
        time_limit_s=row.time_limit_s,
        workdir_digest=row.workdir_digest,
        backend=row.backend,
        submitted_at=row.submitted_at,
        admitted_at=row.admitted_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        reason=row.reason,
        cancel_requested=row.cancel_requested_at is not None,
        gpu_ids=list(row.gpu_ids or []),
        exit_code=row.exit_code,
        signal=row.signal,
        wall_s=row.wall_s,
        cpu_s=row.cpu_s,
        max_rss_bytes=row.max_rss_bytes,
        gpu_s=row.gpu_s,
        queue_position=queue_position,
        events=events,
        allocation_id=row.allocation_id,
        hold_gpu_hours=row.hold_gpu_hours,
        charged_gpu_hours=row.charged_gpu_hours,
        pool=pool,
        preemptible=bool(row.preemptible),
        borrowed=bool(row.borrowed),
        preempting=row.preempt_requested_at is not None,
        preemptions=row.preemptions or 0,
        estimated_start_at=row.estimated_start_at,
        priority=row.priority or 0,
        deadline=row.deadline,
        green_start_at=row.green_start_at,
        facility_kwh=row.facility_kwh,
        water_l=row.water_l,
        carbon_kg=row.carbon_kg,
        carbon_saved_kg=row.carbon_saved_kg,
        carbon_note=row.carbon_note,
        nodes=row.nodes or 1,
        partition=row.partition,
        network=Network(row.network) if row.network else None,
        energy={
            component: ComponentEnergy(
                getattr(row, f"{component}_energy_j"), info["method"], bool(info["measured"])
            )
            for component, info in (row.energy_methods or {}).items()
            if getattr(row, f"{component}_energy_j", None) is not None
        },
    )
