"""The pool-aware admission engine's input and output: plain, immutable data.

Times are seconds (floats) on the caller's clock: the live controller passes Unix time, the
simulator its virtual clock. Nothing here reads a clock, a database or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fabriek.core.green import Window
from fabriek.core.identity import Network

ALL_NETWORKS = frozenset(Network)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    gpus: int
    cpus: int
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Partition:
    """Nodes with one GPU type (or none), e.g. Slurm partition `gpu-h100` or the local machine."""

    name: str
    gpu_type: str
    nodes: tuple[Node, ...]
    billing_weight: float = 1.0  # GPU-hours charged per GPU-hour used on this type
    # The networks a job may have here (its operator's limit, and the least its backend can
    # hold a job to).
    networks: frozenset[Network] = ALL_NETWORKS
    # Derived once: the engine reads them every cycle, and a partition's nodes do not change.
    gpus: int = field(init=False, repr=False, compare=False)
    node_index: dict[str, int] = field(init=False, repr=False, compare=False)  # name -> position
    # The fewest GPUs, CPUs and memory bytes of any node (0 without nodes), and the most GPUs.
    least: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    most_gpus: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodes = self.nodes
        object.__setattr__(self, "gpus", sum(n.gpus for n in nodes))
        object.__setattr__(self, "node_index", {n.name: i for i, n in enumerate(nodes)})
        least = (
            (min(n.gpus for n in nodes), min(n.cpus for n in nodes),
             min(n.memory_bytes for n in nodes))
            if nodes
            else (0, 0, 0)
        )  # fmt: skip
        object.__setattr__(self, "least", least)
        object.__setattr__(self, "most_gpus", max((n.gpus for n in nodes), default=0))


@dataclass(frozen=True, slots=True)
class Pool:
    """A share of the factory: `guarantee` is the fraction of each GPU type it is owed whenever it
    has demand. It may borrow idle GPUs of other pools up to `borrow_limit` (a fraction of each
    type, None: no limit) and lends at most `lend_limit` of its guarantee to others."""

    name: str
    guarantee: float
    borrow_limit: float | None = None
    lend_limit: float = 1.0


@dataclass(frozen=True, slots=True)
class Allocation:
    """A project's budget in a pool: GPU-hours left after what finished jobs were charged."""

    id: int
    project: str
    pool: str
    remaining_gpu_hours: float
    size_gpu_hours: float  # the budget as granted: fair share divides usage by it


@dataclass(frozen=True, slots=True)
class Request:
    """What a job asks for: `nodes` nodes with this much on each, for at most `time_limit_s`."""

    gpus_per_node: int = 0
    cpus_per_node: int = 1
    memory_per_node: int = 0
    nodes: int = 1
    gpu_type: str | None = None  # None: any partition
    time_limit_s: float = 3600.0
    partition: str | None = None  # only this partition; None: any (of `gpu_type`)
    # Only partitions that offer one of these networks (what it asked for; or, where it asked
    # for none, what its project's lock allows); None: any (it gets the default of where it
    # lands).
    networks: frozenset[Network] | None = None
    # Derived once: the engine reads `gpus` and hashes requests millions of times a minute in
    # the simulator (and per pending job per cycle live).
    gpus: int = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", self.gpus_per_node * self.nodes)
        key = (self.gpus_per_node, self.cpus_per_node, self.memory_per_node, self.nodes,
               self.gpu_type, self.time_limit_s, self.partition, self.networks)  # fmt: skip
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class PendingJob:
    id: int
    project: str
    pool: str
    allocation: int | None
    request: Request
    submitted_at: float
    priority: int = 0
    preemptible: bool = False
    # Green scheduling: it must end by `deadline` (None: as soon as it can). The engine may hold
    # it back for the hours with the lowest forecast carbon intensity; `green_start` is the start
    # an earlier cycle chose: once it has come, the job is not held back again.
    deadline: float | None = None
    green_start: float | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    partition: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunningJob:
    id: int
    project: str
    pool: str
    allocation: int | None
    request: Request
    placement: Placement
    started_at: float
    preemptible: bool = False
    borrowed: bool = False  # admitted beyond its pool's guarantee
    preempting: bool = False  # asked to stop by an earlier cycle, still on its nodes
    # When its time limit ends it: derived once, as every cycle sorts the running jobs by it.
    ends_by: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ends_by", self.started_at + self.request.time_limit_s)


# Snapshot.starving_after_s by default. Two weeks, not Slurm's 7-day PriorityMaxAge: replays of
# ITP and Philly at sustained load found 7 days puts so much of the queue first, oldest first,
# that fair share mostly stops ordering it (small jobs' p99 wait 2-5x longer than without the
# guard); 14 days keeps most of what the guard is for, the worst waits (BENCHMARKS.md).
STARVING_AFTER_S = 14 * 86400.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    partitions: tuple[Partition, ...]
    pools: tuple[Pool, ...]
    allocations: tuple[Allocation, ...] = ()
    running: tuple[RunningJob, ...] = ()
    pending: tuple[PendingJob, ...] = ()
    # Recent use per project (GPU-seconds, decayed with the fair-share half-life; fairshare.py).
    usage: dict[str, float] = field(default_factory=dict)
    # How many pending jobs after each blocked head the backfill step looks at (Slurm's
    # bf_max_job_test is 500 by default).
    backfill_depth: int = 1000
    # A job waiting this long goes first in its pool's queue, the longest-waiting first, whatever
    # its project's recent use: fair share orders, it does not starve (as Slurm's age factor
    # saturates at PriorityMaxAge). None: never.
    starving_after_s: float | None = STARVING_AFTER_S
    # The grid's forecast carbon intensity (g CO2e/kWh) of each hour from `forecast_start`
    # (None where unknown); empty: green scheduling holds nothing back.
    forecast: tuple[float | None, ...] = ()
    forecast_start: float = 0.0
    # Whether every job left in a queue gets its reason, and each blocked pool its head
    # (Decisions.reasons, .heads): the controller shows them; the simulator reads neither.
    explain: bool = True
    # The caller's promise that `pending` is already by priority (highest first), then
    # submission time, then id: the engine need not sort it so before fair share orders it
    # (the simulator keeps its queue so; three sorts of every pending job per cycle).
    pending_in_order: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    job_id: int
    placement: Placement
    borrowed: bool = False


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: int
    reason: str


@dataclass(slots=True)
class Decisions:
    admissions: list[Admission] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    # The start time reserved for the job at the head of each blocked pool queue (EASY backfill
    # promises it), and the estimate for others where one is known.
    reservations: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    # The job each pool's queue stopped at. Until capacity frees, a later cycle need only look at
    # these and at newly submitted jobs (the controller's incremental passes).
    heads: dict[str, int] = field(default_factory=dict)
    # Jobs held back for a greener hour -> the window chosen (core.green.Window).
    deferrals: dict[int, Window] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
