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

import bisect
import heapq
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter

from fabriek.scheduling.engine import decide, guarantees
from fabriek.scheduling.model import (
    STARVING_AFTER_S,
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
    # How the engine sees it, kept between decisions: waiting, built once (Policy.prepare) and
    # again when its green start changes; running, once per run.
    pending: PendingJob | None = None
    running: RunningJob | None = None
    running_key: tuple[int, bool] = (0, False)  # (starts, stopping) `running` was built for
    green_start: float | None = None  # the start the engine chose for it, if it deferred it
    deferred: bool = False  # the engine held it back for greener hours at least once

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
    idle: int = 0  # events where the policy, provably, had nothing to do (Policy.idle)
    seconds: float = 0.0  # wall time of the replay


Progress = Callable[[int, int], None]  # (jobs ended, jobs in all)
# The grid's carbon intensity (g CO2e/kWh) of the hour that holds a moment of the replay's clock.
Intensity = Callable[[float], float]


def started_at(run: Run, now: float) -> float:
    """When its current run began (a start at time 0 is a start: no `or`)."""
    return run.starts[-1] if run.starts else now


class Policy:
    """Decides, at one moment, which waiting jobs start (and, for fabriek, which stop)."""

    name = "policy"
    # A stopped job resumes from where it stopped (a checkpoint, as Tiresias assumes); if False,
    # its run is lost and it starts over (fabriek's live behaviour without checkpoints).
    resumes = False

    def prepare(self, runs: Sequence[Run]) -> None:
        """Every run of the replay, before it begins: for policies that keep a view of each."""

    def started(self, run: Run, at: float) -> None:
        """A run started at `at`: for policies that remember use."""

    def wakes(self) -> list[float]:
        """Moments the policy wants to be asked again although nothing starts or ends then
        (a deferred job's chosen start); each is returned once."""
        return []

    def finished(self, run: Run, at: float) -> None:
        """A run ended (or was stopped) at `at`: for policies that remember use."""

    def idle(self, tally: Tally, free: Free) -> bool:
        """True only if `decide` would, provably, start and stop nothing now: the replay then
        does not ask. (False is always safe.)"""
        return False

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[list[tuple[Run, tuple[str, ...]]], list[Run]]:
        """(jobs to start with their nodes, jobs to stop)."""
        raise NotImplementedError


@dataclass(slots=True)
class Tally:
    """Counts the replay keeps as jobs wait, start and stop, so that a policy can tell cheaply
    when it has nothing to do (Policy.idle), and the accounting need not look at every job."""

    # (pool, GPUs per node, nodes) of the waiting jobs -> how many wait
    shapes: Counter[tuple[str, int, int]] = field(default_factory=Counter)
    used: Counter[str] = field(default_factory=Counter)  # GPUs each pool runs (stopping too)
    borrowed: int = 0  # running borrowed jobs not asked to stop
    busy: int = 0  # GPUs running (stopping too)
    wanted: int = 0  # GPUs the waiting jobs ask for
    # pool -> GPUs a waiting job of it asks for -> how many such jobs wait
    sizes: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def wait(self, run: Run, sign: int = 1) -> None:
        request, pool = run.request, run.job.pool
        shape = (pool, request.gpus_per_node, request.nodes)
        self.shapes[shape] += sign
        if not self.shapes[shape]:
            del self.shapes[shape]
        gpus = request.gpus
        sizes = self.sizes[pool]
        sizes[gpus] += sign
        if not sizes[gpus]:
            del sizes[gpus]
        self.wanted += sign * gpus

    def run(self, run: Run, sign: int = 1) -> None:
        gpus = sign * run.request.gpus
        self.used[run.job.pool] += gpus
        self.busy += gpus
        if run.borrowed and not run.stopping:
            self.borrowed += sign

    def fits_none(self, free: Free) -> bool:
        """Whether no waiting job's shape fits the free nodes now."""
        return not any(free.room(gpus, nodes) for _, gpus, nodes in self.shapes)


class Free:
    """Free GPUs per node, and where a request fits (best fit: the fullest node that has room,
    the first in node order among equals; a multi-node job takes the first whole free nodes).

    Nodes are kept by how many GPUs they have free, in node order, so that a fit costs the
    number of levels, not the number of nodes."""

    def __init__(self, machine: Machine) -> None:
        self.gpn = machine.gpus_per_node
        self.names = [f"n{i:05}" for i in range(machine.nodes)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.free = [self.gpn] * machine.nodes  # by node index
        self.total = machine.gpus
        self.free_gpus = machine.gpus
        # free GPUs -> the indices of the nodes with that many, ascending
        self.at: list[list[int]] = [[] for _ in range(self.gpn)] + [list(range(machine.nodes))]

    def room(self, gpus_per_node: int, nodes: int) -> bool:
        """Whether `nodes` nodes have `gpus_per_node` free GPUs each."""
        return sum(map(len, self.at[gpus_per_node:])) >= nodes

    def fit(self, request: Request) -> tuple[str, ...] | None:
        if not self.room(request.gpus_per_node, request.nodes):
            return None  # the usual answer on a busy machine, known without a look at the nodes
        if request.nodes == 1:
            for level in self.at[request.gpus_per_node :]:
                if level:
                    return (self.names[level[0]],)
            return None
        whole = self.at[self.gpn]
        if len(whole) < request.nodes:
            return None
        return tuple(self.names[i] for i in whole[: request.nodes])

    @classmethod
    def empty_like(cls, other: Free) -> Free:
        """A machine of the same nodes with nothing running."""
        empty = cls.__new__(cls)
        empty.gpn, empty.total, empty.free_gpus = other.gpn, other.total, other.total
        empty.names, empty.index = other.names, other.index
        empty.free = [other.gpn] * len(other.names)
        empty.at = [[] for _ in range(other.gpn)] + [list(range(len(other.names)))]
        return empty

    def take(self, request: Request, nodes: Sequence[str], sign: int = 1) -> None:
        for node in nodes:
            i = self.index[node]
            before = self.free[i]
            after = self.free[i] = before - sign * request.gpus_per_node
            if after != before:
                level = self.at[before]
                del level[bisect.bisect_left(level, i)]
                bisect.insort(self.at[after], i)
        self.free_gpus -= sign * request.gpus


class FabriekPolicy(Policy):
    """The live engine: pools with guarantees, borrowing and reclaim, fair share, backfill."""

    name = "fabriek"

    def __init__(
        self,
        machine: Machine,
        pools: Sequence[PoolShare],
        *,
        forecast: Intensity | None = None,
        epoch: float = 0.0,
        horizon_h: int = 72,
        starving_after_s: float | None = STARVING_AFTER_S,
        checkpoints: bool = False,
    ) -> None:
        """`forecast`: the intensity the engine plans flexible work with (None: it defers
        nothing), hour by hour from `epoch` on the replay's clock, `horizon_h` hours ahead.
        `starving_after_s`: the engine's starvation guard (Snapshot), None for none.
        `checkpoints`: a preempted job saves its work in the grace period and resumes there
        (the live factory's SIGTERM allows it; whether a job does is up to the job)."""
        self.resumes = checkpoints
        self.starving_after_s = starving_after_s
        self.forecast, self.epoch_hour, self.horizon_h = forecast, epoch, horizon_h
        self._forecasts: dict[int, tuple[float, ...]] = {}
        self._wakes: list[float] = []
        self.partition = machine.partition()
        self.pools = tuple(Pool(p.name, p.guarantee) for p in pools)
        self.rate = math.log(2) / FAIR_SHARE_HALF_LIFE_S
        self.done: dict[str, tuple[float, float]] = {}  # project -> (decayed use, as of when)
        # Running work per project: GPUs, and the sum of GPUs x exp(rate x (start - epoch)),
        # so that its decayed use now is (GPUs - exp(-rate x (now - epoch)) x sum) / rate.
        self.running_gpus: Counter[str] = Counter()
        self.running_sum: defaultdict[str, float] = defaultdict(float)
        self.epoch: float | None = None
        whole = guarantees(self.pools, {machine.gpu_type: machine.gpus})
        self.owed = {name: g.get(machine.gpu_type, 0) for name, g in whole.items()}

    def idle(self, tally: Tally, free: Free) -> bool:
        """The engine admits only onto free nodes, and preempts only for a waiting job within
        its pool's guarantee, taking borrowed jobs not already stopping. So with no waiting
        shape fitting the free nodes, and no such job or no such borrowed work, it decides
        nothing (tests/sim check the replay is the same with and without this)."""
        if not tally.fits_none(free):
            return False
        if not tally.borrowed:
            return True
        used, owed = tally.used, self.owed
        return all(
            used[pool] + gpus * nodes > owed.get(pool, 0) for pool, gpus, nodes in tally.shapes
        )

    def prepare(self, runs: Sequence[Run]) -> None:
        """The engine's view of every job, built once (a cycle then gathers the waiting jobs'
        views in C, not with a call per job)."""
        for run in runs:
            run.pending = _as_pending(run)

    def started(self, run: Run, at: float) -> None:
        if self.epoch is None or self.rate * (at - self.epoch) > 300:  # keep exp() in range
            self._rebase(at)
        assert self.epoch is not None
        project = run.job.project
        self.running_gpus[project] += run.request.gpus
        self.running_sum[project] += run.request.gpus * math.exp(self.rate * (at - self.epoch))

    def _rebase(self, at: float) -> None:
        if self.epoch is not None:
            scale = math.exp(-self.rate * (at - self.epoch))
            for project in self.running_sum:
                self.running_sum[project] *= scale
        self.epoch = at

    def finished(self, run: Run, at: float) -> None:
        """Fold an ended run into its project's decayed use (fairshare.decayed_usage's
        integral, kept incrementally)."""
        start = run.start if run.start is not None else at
        project = run.job.project
        assert self.epoch is not None
        self.running_gpus[project] -= run.request.gpus
        if self.running_gpus[project]:
            self.running_sum[project] -= run.request.gpus * math.exp(
                self.rate * (start - self.epoch)
            )
        else:  # exactly nothing, not a rounding residue that would order projects apart
            del self.running_gpus[project], self.running_sum[project]
        value = run.request.gpus * (1 - math.exp(-self.rate * (at - start))) / self.rate
        before, as_of = self.done.get(run.job.project, (0.0, at))
        self.done[run.job.project] = (before * math.exp(-self.rate * (at - as_of)) + value, at)

    def _forecast(self, hour: int) -> tuple[float, ...]:
        """A perfect forecast: the series itself, `horizon_h` hours from `hour`."""
        if self.forecast is None:
            return ()
        found = self._forecasts.get(hour)
        if found is None:
            self._forecasts.clear()  # the clock only moves forward: one hour kept
            at = self.epoch_hour + hour * 3600
            found = self._forecasts[hour] = tuple(
                self.forecast(at + k * 3600) for k in range(self.horizon_h)
            )
        return found

    def wakes(self) -> list[float]:
        wakes, self._wakes = self._wakes, []
        return wakes

    def usage(self, now: float) -> dict[str, float]:
        """Each project's decayed GPU-seconds: ended runs and running ones."""
        use = {p: v * math.exp(-self.rate * (now - t)) for p, (v, t) in self.done.items()}
        if self.epoch is not None:
            decay = math.exp(-self.rate * (now - self.epoch))
            for project, gpus in self.running_gpus.items():
                value = (gpus - decay * self.running_sum[project]) / self.rate
                use[project] = use.get(project, 0.0) + value
        return use

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[list[tuple[Run, tuple[str, ...]]], list[Run]]:
        hour = int((now - self.epoch_hour) // 3600)
        snapshot = Snapshot(
            now,
            (self.partition,),
            self.pools,
            running=tuple(map(_as_running, running, repeat(now))),
            pending=(pending := tuple(map(_PENDING, waiting))),
            usage=self.usage(now),
            forecast=self._forecast(hour),
            forecast_start=self.epoch_hour + hour * 3600,
            starving_after_s=self.starving_after_s,
            explain=False,
            pending_in_order=True,  # `waiting` is by submission, then id; priorities are alike
        )
        decisions = decide(snapshot)
        if not (decisions.admissions or decisions.deferrals or decisions.preemptions):
            return [], []  # half the time on a busy machine: no need to look anything up
        # In C: the views are in `waiting`'s order.
        by_id = dict(zip(map(_ID, pending), waiting, strict=True))
        for job_id, window in decisions.deferrals.items():
            run = by_id[job_id]
            run.deferred = True
            if run.green_start != window.start:
                run.green_start = window.start
                run.pending = _as_pending(run)  # the engine's view changes
                latest = run.job.submit + run.job.slack  # deadline less the time limit
                self._wakes += [window.start, latest]
        starts = []
        for admission in decisions.admissions:
            run = by_id[admission.job_id]
            run.borrowed = admission.borrowed
            starts.append((run, admission.placement.nodes))
        stopping = {p.job_id for p in decisions.preemptions}
        return starts, [r for r in running if r.job.id in stopping]


_ID = attrgetter("id")
_PENDING = attrgetter("pending")


def _as_pending(run: Run) -> PendingJob:
    job = run.job
    return PendingJob(job.id, job.project, job.pool, None, run.request, job.submit,
                      preemptible=True, deadline=job.deadline,
                      green_start=run.green_start)  # fmt: skip


def _as_running(run: Run, now: float) -> RunningJob:
    key = (len(run.starts), run.stopping)
    if run.running is None or run.running_key != key:
        job = run.job
        run.running = RunningJob(job.id, job.project, job.pool, None, run.request,
                                 Placement("sim", run.nodes), started_at(run, now), True,
                                 run.borrowed, run.stopping)  # fmt: skip
        run.running_key = key
    return run.running


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
    # One Request object per shape, as the live controller's snapshot interns them: the engine
    # keys sets and dicts by request, and alike objects compare at once.
    shapes: dict[Request, Request] = {}
    runs = [
        Run(job, shapes.setdefault(request, request))
        for job in sorted(jobs, key=lambda j: (j.submit, j.id))
        for request in (machine.request(job),)
    ]
    policy.prepare(runs)
    free = Free(machine)
    owed = {p.name: p.guarantee * machine.gpus for p in pools}
    outcome = Outcome(policy.name, machine, runs, [], defaultdict(float), defaultdict(float),
                      defaultdict(float), pool_names=tuple(p.name for p in pools))  # fmt: skip
    waiting: dict[int, Run] = {}
    running: dict[int, Run] = {}
    tally = Tally()
    disordered = False  # whether `waiting` may be out of submission order
    ends: list[tuple[float, int, int]] = []  # (time, job id, run number): stale ones skipped
    wakes: list[float] = []  # moments the policy asked to decide again (Policy.wakes)
    i, ended, now = 0, 0, runs[0].job.submit if runs else 0.0
    last = now
    while i < len(runs) or waiting or running:
        upcoming = [runs[i].job.submit] if i < len(runs) else []
        while ends and not _current(ends[0], running):
            heapq.heappop(ends)
        if ends:
            upcoming.append(ends[0][0])
        while wakes and wakes[0] <= now:
            heapq.heappop(wakes)
        if wakes and waiting:
            upcoming.append(wakes[0])
        if not upcoming:  # waiting jobs that can never start (should not happen: sized above)
            break
        now = min(upcoming)
        _account(outcome, tally, owed, last, now)
        last = now
        while ends and ends[0][0] <= now:
            event = heapq.heappop(ends)
            if not _current(event, running):
                continue  # an end of an earlier run, or a stop it finished before
            job_id, stopped = event[1], event[2] < 0
            run = running.pop(job_id)
            tally.run(run, -1)
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
                tally.wait(run)
                disordered = True  # it keeps its place: ahead of later submissions
            else:
                run.end, run.stopping = now, False
                ended += 1
                if progress is not None:
                    progress(ended, len(runs))
        while i < len(runs) and runs[i].job.submit <= now:
            waiting[runs[i].job.id] = runs[i]
            tally.wait(runs[i])
            i += 1
        if not waiting:
            continue
        if policy.idle(tally, free):
            outcome.idle += 1
            continue
        if disordered:  # else in order already: submissions arrive in order
            waiting = dict(sorted(waiting.items(), key=lambda item: (item[1].job.submit, item[0])))
            disordered = False
        # Views, not copies: a policy looks only as far into the queue as it needs.
        starts, stops = policy.decide(now, waiting.values(), running.values(), free)
        outcome.decisions += 1
        for wake in policy.wakes():
            if wake > now:
                heapq.heappush(wakes, wake)
        for run, nodes in starts:
            del waiting[run.job.id]
            tally.wait(run, -1)
            run.nodes = tuple(nodes)
            run.starts.append(now)
            free.take(run.request, nodes)
            running[run.job.id] = run
            tally.run(run)
            policy.started(run, now)
            left = run.job.duration - run.progress_s
            heapq.heappush(ends, (now + left, run.job.id, len(run.starts)))
        for run in stops:
            if not run.stopping:
                tally.run(run, -1)
                run.stopping = True
                tally.run(run)
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


def _account(outcome: Outcome, tally: Tally, owed: dict[str, float], t0: float, t1: float) -> None:
    """The interval [t0, t1) with the machine as it stands: busy and waiting GPUs, and each
    pool's demand and whether it got its guarantee (or all it wanted)."""
    timeline, used = outcome.timeline, tally.used
    if not timeline or timeline[-1][1] != tally.busy or timeline[-1][2] != tally.wanted:
        timeline.append((t0, tally.busy, tally.wanted))
    per_pool = tuple(map(used.__getitem__, outcome.pool_names))
    if not outcome.pool_busy or outcome.pool_busy[-1][1] != per_pool:
        outcome.pool_busy.append((t0, per_pool))
    dt = t1 - t0
    if dt <= 0:
        return
    for pool, gpus in used.items():
        if gpus:
            outcome.pool_gpu_s[pool] += gpus * dt
    for pool, sizes in tally.sizes.items():
        if sizes:
            outcome.pool_demand_s[pool] += dt
            # Denied its guarantee: a waiting job of the pool would fit within what it is owed.
            if used[pool] + min(sizes) <= owed.get(pool, 0.0):
                outcome.pool_denied_s[pool] += dt
