"""The admission engine's input, read from the database in a handful of Core queries.

No ORM objects: a pass may read tens of thousands of waiting jobs. What the engine needs and the
database does not say (the machine's capacity, the clock, recent usage) is passed in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, or_, select

from fabriek.backends.base import Capacity
from fabriek.core.identity import Network
from fabriek.core.jobs import JobState
from fabriek.core.tenancy import UNALLOCATED
from fabriek.scheduling.fairshare import Use, decayed_usage
from fabriek.scheduling.model import (
    STARVING_AFTER_S,
    Allocation,
    Node,
    Partition,
    PendingJob,
    Placement,
    Pool,
    Request,
    RunningJob,
    Snapshot,
)
from fabriek.server.db.models import AllocationRow, JobRow, PoolRow, ProjectRow

ACTIVE = (JobState.ADMITTED.value, JobState.RUNNING.value)
_JUST = {n: frozenset({n}) for n in Network}
_AT_MOST = {n: frozenset(m for m in Network if n.allows(m)) for n in Network}

# Jobs without an allocation wait in the pool UNALLOCATED. Its guarantee is the capacity that no
# operator's pool is guaranteed (none, with the seeded pools); beyond it its jobs borrow idle
# capacity, and so they are always preemptible. The name is reserved: no operator's pool has it.


@dataclass(slots=True)
class Read:
    """The snapshot and what the controller needs beside it to act on the decisions."""

    snapshot: Snapshot
    reasons: dict[int, str | None] = field(default_factory=dict)  # pending job -> stored reason
    estimates: dict[int, datetime] = field(default_factory=dict)  # pending job -> stored, if set
    # partition -> running job -> the GPUs fabriek gave it (where the backend lets it choose)
    gpu_ids: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)
    green_starts: dict[int, datetime] = field(default_factory=dict)  # pending -> stored, if set
    # Pending jobs whose allocation has ended or not yet begun -> the sentence that says so.
    out_of_period: dict[int, str] = field(default_factory=dict)


def partition_of(name: str, capacity: Capacity) -> Partition:
    """A backend's capacity as the engine sees it: a partition of alike nodes. A one-node
    partition's node has the partition's name; others' are NAME-0, NAME-1, ... (the engine counts
    room per node; which real node a job gets is the backend's business)."""
    r = capacity.resources
    gpu_type = (capacity.gpu_type or "gpu") if r.gpus else ""
    names = [name] if capacity.nodes == 1 else [f"{name}-{i}" for i in range(capacity.nodes)]
    return Partition(
        name,
        gpu_type,
        tuple(Node(n, r.gpus, r.cpus, r.memory_bytes) for n in names),
        capacity.billing_weight,
        capacity.network.offers,
    )


@dataclass(frozen=True, slots=True)
class Static:
    """What changes only by an operator's hand or a job's end: pools and allocations. The
    controller reads it on full passes and keeps it for the passes between."""

    pools: tuple[Pool, ...]
    pools_by_id: dict[int, str]
    allocations: tuple[Allocation, ...]
    out_of_period: dict[int, str]  # allocation -> why it cannot be used now

    def knows(self, allocation: int) -> bool:
        return allocation in self.out_of_period or any(a.id == allocation for a in self.allocations)


def read_pools(conn: Connection) -> tuple[tuple[Pool, ...], dict[int, str]]:
    """Every pool as the engine sees it, UNALLOCATED last, and each pool's name by its id."""
    pools_by_id: dict[int, str] = {}
    pools: list[Pool] = []
    for pool_id, name, guarantee, borrow_limit, lend_limit in conn.execute(
        select(
            PoolRow.id, PoolRow.name, PoolRow.guarantee, PoolRow.borrow_limit, PoolRow.lend_limit
        ).order_by(PoolRow.id)
    ):
        pools_by_id[pool_id] = name
        pools.append(Pool(name, guarantee, borrow_limit, lend_limit))
    unassigned = max(0.0, 1.0 - sum(p.guarantee for p in pools))
    pools.append(Pool(UNALLOCATED, round(unassigned, 9), None, 1.0))
    return tuple(pools), pools_by_id


def read_static(conn: Connection, *, now: datetime) -> Static:
    pools, pools_by_id = read_pools(conn)

    allocations: list[Allocation] = []
    ended: dict[int, str] = {}
    for alloc_id, project_id, pool_id, size, charged, starts, ends in conn.execute(
        select(
            AllocationRow.id,
            AllocationRow.project_id,
            AllocationRow.pool_id,
            AllocationRow.gpu_hours,
            AllocationRow.charged_gpu_hours,
            AllocationRow.starts_at,
            AllocationRow.ends_at,
        )
    ):
        if starts <= now < ends:
            allocations.append(
                Allocation(alloc_id, str(project_id), pools_by_id[pool_id], size - charged, size)
            )
        elif now >= ends:
            ended[alloc_id] = (
                f"waiting: allocation {alloc_id} ended on {ends:%Y-%m-%d %H:%M} UTC; this job "
                "cannot start on it (cancel it, or ask for a new allocation)"
            )
        else:
            ended[alloc_id] = (
                f"waiting: allocation {alloc_id} begins on {starts:%Y-%m-%d %H:%M} UTC"
            )
    return Static(pools, pools_by_id, tuple(allocations), ended)


def read_snapshot(
    conn: Connection,
    *,
    static: Static,
    partitions: tuple[Partition, ...],
    now: datetime,
    usage: dict[str, float],
    after_id: int = 0,
    heads: Collection[int] = (),
    forecast: tuple[tuple[float | None, ...], float] = ((), 0.0),
    starving_after_s: float | None = STARVING_AFTER_S,
) -> Read:
    """Everything the engine decides on. Only pending jobs with ids above `after_id` are read,
    and the blocked heads of the last pass (`heads`): see Controller._admit."""
    t = now.timestamp()
    pools_by_id, ended = static.pools_by_id, static.out_of_period

    # Shared: the engine caches by request.
    requests: dict[tuple[Any, ...], Request] = {}

    def request(
        gpus: int,
        cpus: int,
        memory: int,
        limit: int,
        nodes: int,
        partition: str | None,
        networks: frozenset[Network] | None = None,
    ) -> Request:
        key = (gpus, cpus, memory, limit, nodes, partition, networks)
        found = requests.get(key)
        if found is None:
            found = requests[key] = Request(
                gpus, cpus, memory, nodes, None, float(limit), partition, networks
            )
        return found

    # A pending job may run only where it can have a network it may: the one it asked for, or
    # where it asked for none and its project is locked, one at or below the lock (a few
    # projects at most: read each pass, as an operator may lock one at any time).
    locked = {
        project_id: _AT_MOST[Network(lock)]
        for project_id, lock in conn.execute(
            select(ProjectRow.id, ProjectRow.network_limit).where(
                ProjectRow.network_limit.is_not(None)
            )
        )
    }

    def networks_of(project_id: int, asked: str | None) -> frozenset[Network] | None:
        if asked is not None:
            return _JUST[Network(asked)]
        return locked.get(project_id)

    jobs = JobRow.__table__.c
    pool_of = AllocationRow.__table__.c.pool_id
    joined = JobRow.__table__.outerjoin(
        AllocationRow.__table__, AllocationRow.__table__.c.id == jobs.allocation_id
    )
    # What the running and the pending query both read first: the job, its pool, its request.
    shape = (
        jobs.id,
        jobs.project_id,
        jobs.allocation_id,
        pool_of,
        jobs.gpus,
        jobs.cpus,
        jobs.memory_bytes,
        jobs.time_limit_s,
        jobs.nodes,
        jobs.partition,
    )
    read = Read(Snapshot(t, partitions, ()))
    node_names = {p.name: tuple(n.name for n in p.nodes) for p in partitions}
    running: list[RunningJob] = []
    for (
        job_id,
        project_id,
        alloc_id,
        pool_id,
        gpus,
        cpus,
        memory,
        limit,
        nodes,
        asked_partition,
        admitted_at,
        preemptible,
        borrowed,
        preempt_requested_at,
        gpu_ids,
        backend,
        placed,
    ) in conn.execute(
        select(
            *shape,
            jobs.admitted_at,
            jobs.preemptible,
            jobs.borrowed,
            jobs.preempt_requested_at,
            jobs.gpu_ids,
            jobs.backend,
            jobs.placement,
        )
        .select_from(joined)
        .where(jobs.state.in_(ACTIVE))
    ):
        running.append(
            RunningJob(
                job_id,
                str(project_id),
                UNALLOCATED if pool_id is None else pools_by_id.get(pool_id, f"#{pool_id}"),
                alloc_id,
                request(gpus, cpus, memory, limit, nodes, asked_partition),
                # Rows from before placements were kept ran on a one-node partition.
                Placement(backend, tuple(placed) if placed else node_names.get(backend, ())),
                admitted_at.timestamp() if admitted_at else t,
                preemptible,
                borrowed,
                preempt_requested_at is not None,
            )
        )
        if gpu_ids:
            read.gpu_ids.setdefault(backend, {})[job_id] = tuple(gpu_ids)

    which = jobs.id > after_id
    if heads:
        which = or_(which, jobs.id.in_(list(heads)))
    # Set on few jobs: read apart, so that thousands of empty dates are not converted each pass.
    extras = {
        job_id: (estimate, deadline, green_start)
        for job_id, estimate, deadline, green_start in conn.execute(
            select(jobs.id, jobs.estimated_start_at, jobs.deadline, jobs.green_start_at).where(
                jobs.state == JobState.PENDING.value,
                which,
                or_(
                    jobs.estimated_start_at.is_not(None),
                    jobs.deadline.is_not(None),
                    jobs.green_start_at.is_not(None),
                ),
            )
        )
    }
    none = (None, None, None)
    pending: list[PendingJob] = []
    for (
        job_id,
        project_id,
        alloc_id,
        pool_id,
        gpus,
        cpus,
        memory,
        limit,
        nodes,
        asked_partition,
        submitted_at,
        preemptible,
        priority,
        reason,
        network,
    ) in conn.execute(
        select(
            *shape,
            jobs.submitted_at,
            jobs.preemptible,
            jobs.priority,
            jobs.reason,
            jobs.network,
        )
        .select_from(joined)
        .where(jobs.state == JobState.PENDING.value, which)
        .order_by(jobs.id)
    ):
        estimate, deadline, green_start = extras.get(job_id, none)
        pending.append(
            PendingJob(
                job_id,
                str(project_id),
                UNALLOCATED if pool_id is None else pools_by_id.get(pool_id, f"#{pool_id}"),
                alloc_id,
                request(
                    gpus,
                    cpus,
                    memory,
                    limit,
                    nodes,
                    asked_partition,
                    networks_of(project_id, network),
                ),
                submitted_at.timestamp(),
                priority,
                preemptible,
                deadline.timestamp() if deadline else None,
                green_start.timestamp() if green_start else None,
            )
        )
        read.reasons[job_id] = reason
        if green_start is not None:
            read.green_starts[job_id] = green_start
        if estimate is not None:
            read.estimates[job_id] = estimate
        if alloc_id in ended:
            read.out_of_period[job_id] = ended[alloc_id]
    read.snapshot = Snapshot(
        t,
        partitions,
        static.pools,
        static.allocations,
        tuple(running),
        tuple(pending),
        usage,
        forecast=forecast[0],
        forecast_start=forecast[1],
        starving_after_s=starving_after_s,
    )
    return read


def recent_usage(conn: Connection, *, now: datetime, half_life_s: float) -> dict[str, float]:
    """Each project's GPU use, decayed with the half-life (fair share with memory). Use older
    than eight half-lives (under 0.4 %) is not read."""
    since = now - timedelta(seconds=8 * half_life_s)
    jobs = JobRow.__table__.c
    uses = [
        Use(str(project_id), gpus, started.timestamp(), (finished or now).timestamp())
        for project_id, gpus, started, finished in conn.execute(
            select(
                jobs.project_id, jobs.gpus * jobs.nodes, jobs.started_at, jobs.finished_at
            ).where(
                jobs.gpus > 0,
                jobs.started_at.is_not(None),
                or_(jobs.finished_at.is_(None), jobs.finished_at >= since),
            )
        )
    ]
    return decayed_usage(uses, now=now.timestamp(), half_life_s=half_life_s)
