"""A discrete-event replay of a workload on a virtual machine, under a scheduling policy.

The clock jumps from event to event (a submission, an end); at each event the policy decides
which waiting jobs start. Policy `fabriek` is the live controller's own engine,
`fabriek.scheduling.engine.decide`, called on a Snapshot as the controller builds it (no copy of
its logic); the baselines (policies.py) decide on the same machine model. Jobs run exactly their
trace duration; their requested time limits are what the engine and backfill plan with.
A job stopped for a pool's reclaim loses its run (as in the live factory, without a checkpoint)
and waits again, keeping its place; its GPUs are free after the grace period.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fabriek.scheduling.engine import decide
from fabriek.scheduling.model import (
    Node,
    Partition,
    PendingJob,
    Placement,
    Pool,
    Request,
    RunningJob,
    Snapshot,
)
from fabriek.sim.workload import PoolShare, SimJob

GIB = 2**30
FAIR_SHARE_HALF_LIFE_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Machine:
    """`nodes` alike nodes of one GPU type."""

    nodes: int
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8
    memory_per_gpu: int = 64 * GIB
    gpu_type: str = "gpu"

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def partition(self) -> Partition:
        g = self.gpus_per_node
        return Partition(
            "sim",
            self.gpu_type,
            tuple(
                Node(f"n{i:05}", g, g * self.cpus_per_gpu, g * self.memory_per_gpu)
                for i in range(self.nodes)
            ),
        )

    def request(self, job: SimJob) -> Request:
        """A job of G GPUs: G on one node if they fit there, else whole nodes (G rounded up)."""
        g = self.gpus_per_node
        per_node, nodes = (job.gpus, 1) if job.gpus <= g else (g, math.ceil(job.gpus / g))
        return Request(
            gpus_per_node=per_node,
            cpus_per_node=per_node * self.cpus_per_gpu,
            memory_per_node=per_node * self.memory_per_gpu,
            nodes=nodes,
            time_limit_s=job.time_limit,
        )


@dataclass(slots=True)
class Run:
    """One job's life in the replay."""

    job: SimJob
    request: Request
    starts: list[float] = field(default_factory=list)  # every start (preempted runs too)
    end: float | None = None
    preemptions: int = 0
    lost_gpu_s: float = 0.0  # work thrown away by preemptions
    progress_s: float = 0.0  # run time kept from stopped runs (resuming policies)
    stopped: list[float] = field(default_factory=list)  # when each stopped run had stopped
    nodes: tuple[str, ...] = ()  # while it runs
    borrowed: bool = False  # runs beyond its pool's guarantee
    stopping: bool = False  # asked to stop; its GPUs are free after the grace period

    @property
    def start(self) -> float | None:
        return self.starts[-1] if self.starts else None


@dataclass(slots=True)
class Outcome:
    policy: str
    machine: Machine
    runs: list[Run]
    # (time, busy GPUs, waiting GPUs) after each event: utilisation and queue over time.
    timeline: list[tuple[float, int, int]]
    pool_demand_s: dict[str, float]  # seconds a pool had GPU work waiting
    # Of those, seconds one of its waiting jobs would have fitted within its guarantee (what it
    # was owed less what it ran): time it was denied its guarantee.
    pool_denied_s: dict[str, float]
    pool_gpu_s: dict[str, float]  # GPU-seconds each pool used
    # (time, GPUs each pool runs, in the order of `pool_names`) whenever that changes.
    pool_busy: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    pool_names: tuple[str, ...] = ()
    decisions: int = 0  # how many times the policy was asked
    seconds: float = 0.0  # wall time of the replay


Progress = Callable[[int, int], None]  # (jobs ended, jobs in all)


def started_at(run: Run, now: float) -> float:
    """When its current run began (a start at time 0 is a start: no `or`)."""
    return run.starts[-1] if run.starts else now


class Policy:
    """Decides, at one moment, which waiting jobs start (and, for fabriek, which stop)."""

    name = "policy"
    # A stopped job resumes from where it stopped (a checkpoint, as Tiresias assumes); if False,
    # its run is lost and it starts over (fabriek's live behaviour without checkpoints).
    resumes = False

    def finished(self, run: Run, at: float) -> None:
        """A run ended (or was stopped) at `at`: for policies that remember use."""

    def decide(
        self, now: float, waiting: Sequence[Run], running: Sequence[Run], free: Free
    ) -> tuple[list[tuple[Run, tuple[str, ...]]], list[Run]]:
        """(jobs to start with their nodes, jobs to stop)."""
        raise NotImplementedError


class Free:
    """Free GPUs per node, and where a request fits (best fit: the fullest node that has room;
    a multi-node job takes whole free nodes)."""

    def __init__(self, machine: Machine) -> None:
        self.gpn = machine.gpus_per_node
        self.free = {f"n{i:05}": self.gpn for i in range(machine.nodes)}
        self.total = machine.gpus
        self.free_gpus = machine.gpus

    def fit(self, request: Request) -> tuple[str, ...] | None:
        if request.nodes == 1:
            best = None
            for node, free in self.free.items():
                if free >= request.gpus_per_node and (best is None or free < self.free[best]):
                    best = node
                    if free == request.gpus_per_node:
                        break
            return (best,) if best is not None else None
        whole = [n for n, f in self.free.items() if f == self.gpn]
        return tuple(whole[: request.nodes]) if len(whole) >= request.nodes else None

    @classmethod
    def empty_like(cls, other: Free) -> Free:
        """A machine of the same nodes with nothing running."""
        empty = cls.__new__(cls)
        empty.gpn, empty.total, empty.free_gpus = other.gpn, other.total, other.total
        empty.free = dict.fromkeys(other.free, other.gpn)
        return empty

    def take(self, request: Request, nodes: Sequence[str], sign: int = 1) -> None:
        for node in nodes:
            self.free[node] -= sign * request.gpus_per_node
        self.free_gpus -= sign * request.gpus


class FabriekPolicy(Policy):
    """The live engine: pools with guarantees, borrowing and reclaim, fair share, backfill."""

    name = "fabriek"

    def __init__(self, machine: Machine, pools: Sequence[PoolShare]) -> None:
        self.partition = machine.partition()
        self.pools = tuple(Pool(p.name, p.guarantee) for p in pools)
        self.rate = math.log(2) / FAIR_SHARE_HALF_LIFE_S
        self.done: dict[str, tuple[float, float]] = {}  # project -> (decayed use, as of when)

    def finished(self, run: Run, at: float) -> None:
        """Fold an ended run into its project's decayed use (fairshare.decayed_usage's
        integral, kept incrementally)."""
        start = run.start if run.start is not None else at
        value = run.request.gpus * (1 - math.exp(-self.rate * (at - start))) / self.rate
        before, as_of = self.done.get(run.job.project, (0.0, at))
        self.done[run.job.project] = (before * math.exp(-self.rate * (at - as_of)) + value, at)

    def usage(self, now: float, running: Sequence[Run]) -> dict[str, float]:
        use = {p: v * math.exp(-self.rate * (now - t)) for p, (v, t) in self.done.items()}
        for run in running:
            if run.start is not None:
                value = run.request.gpus * (1 - math.exp(-self.rate * (now - run.start)))
                use[run.job.project] = use.get(run.job.project, 0.0) + value / self.rate
        return use

    def decide(
        self, now: float, waiting: Sequence[Run], running: Sequence[Run], free: Free
    ) -> tuple[list[tuple[Run, tuple[str, ...]]], list[Run]]:
        by_id = {run.job.id: run for run in waiting}
        snapshot = Snapshot(
            now,
            (self.partition,),
            self.pools,
            running=tuple(
                RunningJob(
                    r.job.id,
                    r.job.project,
                    r.job.pool,
                    None,
                    r.request,
                    Placement("sim", r.nodes),
                    started_at(r, now),
                    True,
                    r.borrowed,
                    r.stopping,
                )
                for r in running
            ),
            pending=tuple(
                PendingJob(
                    r.job.id,
                    r.job.project,
                    r.job.pool,
                    None,
                    r.request,
                    r.job.submit,
                    preemptible=True,
                )
                for r in waiting
            ),
            usage=self.usage(now, running),
        )
        decisions = decide(snapshot)
        starts = []
        for admission in decisions.admissions:
            run = by_id[admission.job_id]
            run.borrowed = admission.borrowed
            starts.append((run, admission.placement.nodes))
        stopping = {p.job_id for p in decisions.preemptions}
        return starts, [r for r in running if r.job.id in stopping]


def simulate(
    jobs: Sequence[SimJob],
    machine: Machine,
    policy: Policy,
    *,
    pools: Sequence[PoolShare],
    grace_s: float = 30.0,
    progress: Progress | None = None,
) -> Outcome:
    """Replay `jobs` on `machine` under `policy`, from the first submission until the last end."""
    began = time.perf_counter()
    runs = [Run(job, machine.request(job)) for job in sorted(jobs, key=lambda j: j.submit)]
    free = Free(machine)
    owed = {p.name: p.guarantee * machine.gpus for p in pools}
    outcome = Outcome(policy.name, machine, runs, [], defaultdict(float), defaultdict(float),
                      defaultdict(float), pool_names=tuple(p.name for p in pools))  # fmt: skip
    waiting: dict[int, Run] = {}
    running: dict[int, Run] = {}
    ends: list[tuple[float, int, int]] = []  # (time, job id, run number): stale ones skipped
    i, ended, now = 0, 0, runs[0].job.submit if runs else 0.0
    last = now
    while i < len(runs) or waiting or running:
        upcoming = [runs[i].job.submit] if i < len(runs) else []
        while ends and not _current(ends[0], running):
            heapq.heappop(ends)
        if ends:
            upcoming.append(ends[0][0])
        if not upcoming:  # waiting jobs that can never start (should not happen: sized above)
            break
        now = min(upcoming)
        _account(outcome, waiting, running, owed, last, now)
        last = now
        while ends and ends[0][0] <= now:
            event = heapq.heappop(ends)
            if not _current(event, running):
                continue  # an end of an earlier run, or a stop it finished before
            job_id, stopped = event[1], event[2] < 0
            run = running.pop(job_id)
            free.take(run.request, run.nodes, sign=-1)
            policy.finished(run, now)
            if stopped:
                run.stopping = False
                run.preemptions += 1
                ran = now - started_at(run, now)
                run.stopped.append(now)
                if policy.resumes:
                    run.progress_s += ran
                else:
                    run.lost_gpu_s += run.request.gpus * ran
                waiting[job_id] = run
            else:
                run.end, run.stopping = now, False
                ended += 1
                if progress is not None:
                    progress(ended, len(runs))
        while i < len(runs) and runs[i].job.submit <= now:
            waiting[runs[i].job.id] = runs[i]
            i += 1
        if not waiting:
            continue
        ordered = sorted(waiting.values(), key=lambda r: (r.job.submit, r.job.id))
        starts, stops = policy.decide(now, ordered, list(running.values()), free)
        outcome.decisions += 1
        for run, nodes in starts:
            del waiting[run.job.id]
            run.nodes = tuple(nodes)
            run.starts.append(now)
            free.take(run.request, nodes)
            running[run.job.id] = run
            left = run.job.duration - run.progress_s
            heapq.heappush(ends, (now + left, run.job.id, len(run.starts)))
        for run in stops:
            if not run.stopping:
                run.stopping = True
                heapq.heappush(ends, (now + grace_s, run.job.id, -len(run.starts)))
    outcome.seconds = time.perf_counter() - began
    return outcome


def _current(event: tuple[float, int, int], running: dict[int, Run]) -> bool:
    """Whether an end event still holds: its run is the job's current one, and a stop has not
    been overtaken by the run ending on its own (then the job simply finished)."""
    run = running.get(event[1])
    if run is None or abs(event[2]) != len(run.starts):
        return False
    return run.stopping if event[2] < 0 else True


def _account(
    outcome: Outcome,
    waiting: dict[int, Run],
    running: dict[int, Run],
    owed: dict[str, float],
    t0: float,
    t1: float,
) -> None:
    """The interval [t0, t1) with the machine as it stands: busy and waiting GPUs, and each
    pool's demand and whether it got its guarantee (or all it wanted)."""
    busy: dict[str, int] = defaultdict(int)
    for run in running.values():
        busy[run.job.pool] += run.request.gpus
    want: dict[str, int] = defaultdict(int)
    smallest: dict[str, int] = {}
    for run in waiting.values():
        want[run.job.pool] += run.request.gpus
        smallest[run.job.pool] = min(smallest.get(run.job.pool, run.request.gpus), run.request.gpus)
    total_busy, total_want = sum(busy.values()), sum(want.values())
    if not outcome.timeline or outcome.timeline[-1][1:] != (total_busy, total_want):
        outcome.timeline.append((t0, total_busy, total_want))
    per_pool = tuple(busy.get(name, 0) for name in outcome.pool_names)
    if not outcome.pool_busy or outcome.pool_busy[-1][1] != per_pool:
        outcome.pool_busy.append((t0, per_pool))
    dt = t1 - t0
    if dt <= 0:
        return
    for pool, gpus in busy.items():
        outcome.pool_gpu_s[pool] += gpus * dt
    for pool in want:
        outcome.pool_demand_s[pool] += dt
        # Denied its guarantee: a waiting job of the pool would fit within what it is owed.
        if busy.get(pool, 0) + smallest[pool] <= owed.get(pool, 0.0):
            outcome.pool_denied_s[pool] += dt
