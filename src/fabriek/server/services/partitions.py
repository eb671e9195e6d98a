"""What `sinfo` shows for a Slurm cluster, for the whole factory: each partition's nodes and what
is busy on them now, and how many jobs wait in each pool.

Anyone signed in may read it. It names no job, user or project: only totals, so one tenant learns
how busy the factory is without learning what another tenant runs.

The figures are fabriek's own books (the jobs it admitted, on the nodes the engine counted them
on), not a fresh look at the machines: on a Slurm partition shared with work fabriek did not
submit, `sinfo` may show more in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fabriek.backends.base import Capacity
from fabriek.core.jobs import JobState
from fabriek.core.tenancy import UNALLOCATED
from fabriek.server.controller.snapshot import ACTIVE, partition_of
from fabriek.server.db.models import AllocationRow, JobRow, PoolRow


@dataclass(frozen=True, slots=True)
class NodeUse:
    name: str
    cpus_busy: int
    memory_busy_bytes: int
    gpus_busy: int

    def state(self, capacity: Capacity) -> str:
        """Slurm's words: idle (nothing runs), allocated (every CPU is taken), else mixed."""
        if not (self.cpus_busy or self.memory_busy_bytes or self.gpus_busy):
            return "idle"
        return "allocated" if self.cpus_busy >= capacity.resources.cpus else "mixed"


@dataclass(frozen=True, slots=True)
class PartitionNow:
    name: str
    kind: str  # "local" (this machine) or "slurm"
    capacity: Capacity
    nodes: tuple[NodeUse, ...]
    running_jobs: int
    pending_jobs: int  # waiting jobs that asked for this partition by name

    def count(self, state: str) -> int:
        return sum(1 for n in self.nodes if n.state(self.capacity) == state)

    @property
    def gpus_busy(self) -> int:
        return sum(n.gpus_busy for n in self.nodes)

    @property
    def cpus_busy(self) -> int:
        return sum(n.cpus_busy for n in self.nodes)

    @property
    def memory_busy_bytes(self) -> int:
        return sum(n.memory_busy_bytes for n in self.nodes)


@dataclass(frozen=True, slots=True)
class PoolQueue:
    pool: str
    running_jobs: int
    running_gpus: int
    pending_jobs: int
    pending_gpus: int  # GPUs the waiting jobs ask for, all their nodes together


@dataclass(frozen=True, slots=True)
class FactoryNow:
    partitions: tuple[PartitionNow, ...]
    pools: tuple[PoolQueue, ...]


def factory_now(session: Session, *, partitions: Mapping[str, Capacity]) -> FactoryNow:
    """The partitions with their nodes' use, and each pool's running and waiting jobs (counts)."""
    nodes = {
        name: {n.name: [0, 0, 0] for n in partition_of(name, cap).nodes}
        for name, cap in partitions.items()
    }
    running = dict.fromkeys(partitions, 0)
    for backend, placement, count, cpus, memory, gpus in session.execute(
        select(
            JobRow.backend,
            JobRow.placement,
            JobRow.nodes,
            JobRow.cpus,
            JobRow.memory_bytes,
            JobRow.gpus,
        ).where(JobRow.state.in_(ACTIVE))
    ):
        if backend not in nodes:
            continue  # a partition no longer configured
        running[backend] += 1
        # Rows from before placements were kept ran on a one-node partition.
        for node in placement or list(nodes[backend])[:count]:
            used = nodes[backend].get(node)
            if used is not None:
                used[0] += cpus
                used[1] += memory
                used[2] += gpus
    asked = dict(
        session.execute(
            select(JobRow.partition, func.count())
            .where(JobRow.state == JobState.PENDING.value, JobRow.partition.is_not(None))
            .group_by(JobRow.partition)
        ).all()
    )
    result = tuple(
        PartitionNow(
            name,
            "local" if name == "local" else "slurm",
            cap,
            tuple(NodeUse(n, *used) for n, used in nodes[name].items()),
            running[name],
            asked.get(name, 0),
        )
        for name, cap in partitions.items()
    )
    return FactoryNow(result, _pools(session))


def _pools(session: Session) -> tuple[PoolQueue, ...]:
    names = list(session.scalars(select(PoolRow.name).order_by(PoolRow.id)))
    figures = {name: [0, 0, 0, 0] for name in [*names, UNALLOCATED]}
    gpus = JobRow.gpus * JobRow.nodes
    for pool, state, jobs, asked in session.execute(
        select(PoolRow.name, JobRow.state, func.count(), func.coalesce(func.sum(gpus), 0))
        .select_from(JobRow)
        .outerjoin(AllocationRow, AllocationRow.id == JobRow.allocation_id)
        .outerjoin(PoolRow, PoolRow.id == AllocationRow.pool_id)
        .where(JobRow.state.in_([*ACTIVE, JobState.PENDING.value]))
        .group_by(PoolRow.name, JobRow.state)
    ):
        row = figures.setdefault(pool or UNALLOCATED, [0, 0, 0, 0])
        at = 2 if state == JobState.PENDING.value else 0
        row[at] += jobs
        row[at + 1] += int(asked)
    return tuple(PoolQueue(name, *row) for name, row in figures.items())
