"""The pool-aware admission engine: `decide(snapshot) -> decisions`, pure.

One cycle, each step named and timed (Decisions.timings):

1. **snapshot**: free resources per node, the pools' guarantees in GPUs of each type, what
   every pool and allocation already holds.
2. **nominate**: pending jobs per pool; a job that can never start (no partition could hold
   it, or it cannot be preempted and needs more than its pool's whole guarantee), or whose
   allocation cannot cover it, is set aside with its reason and does not block its pool.
3. **order**: each pool's queue by fair share with memory (the project's decayed use divided by
   its allocation's size), then priority, then submission time; jobs that have waited longer
   than `starving_after_s` (14 days) first, the longest-waiting first.
4. **admit**: pools take turns, the one furthest below its guarantee first. A pool's head job
   starts if it fits within the pool's guarantee and on the nodes (gang: all its nodes at once,
   or not at all); otherwise the pool's queue stops there.
5. **preempt**: a pool whose head fits its guarantee but not on the nodes, because other pools
   borrowed, reclaims: the newest borrowed, preemptible jobs of pools above their guarantee are
   released until the head fits; those on the nodes it will start on are preempted. Jobs
   already being preempted count first.
6. **borrow**: heads beyond their guarantee start on idle capacity that pools without pending
   demand may lend (and the unassigned rest), if preemptible and within the borrow limit. Since
   only pools without demand lend, a borrower is not reclaimed at once (no ping-pong). Demand
   here is work the pool's guarantee could hold: a job larger than its pool's whole guarantee
   does not keep that guarantee idle (it could never run there).
7. **backfill** (EASY): each blocked head gets a reserved start, the earliest time enough
   running jobs end by their time limits for it to fit, within its pool's guarantee and what
   the pool could ever borrow (pools with waiting work lend nothing). A later job starts now
   only if it fits
   and cannot delay any reserved head: it ends before the reservation, or uses none of the
   reserved nodes. A job beyond its pool's guarantee that may not borrow (step 6: every pool
   that could lend wants its GPUs) may still borrow GPUs that stand idle on nodes no head has
   reserved and no reclaim has claimed: the pools that want them cannot use them before their
   reserved starts.
8. **explain**: every job left waiting gets a plain sentence, stable from pass to pass (queue
   positions and times are added when shown).
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter

from fabriek.core.identity import spelled
from fabriek.scheduling.green import plan_green
from fabriek.scheduling.model import (
    ALL_NETWORKS,
    Admission,
    Decisions,
    Partition,
    PendingJob,
    Placement,
    Pool,
    Preemption,
    Request,
    RunningJob,
    Snapshot,
)

NO_GPU = ""  # the GPU type of CPU-only work; no pool limits it


@contextmanager
def _step(decisions: Decisions, name: str, clock: Callable[[], float]) -> Iterator[None]:
    began = clock()
    yield
    decisions.timings[name] = clock() - began


def decide(snapshot: Snapshot, *, clock: Callable[[], float] = time.perf_counter) -> Decisions:
    """The decisions of one admission cycle. `clock` only times the steps."""
    decisions = Decisions()
    with _step(decisions, "snapshot", clock):
        state = _State(snapshot)
    with _step(decisions, "nominate", clock):
        queues = _nominate(state, snapshot.pending, decisions)
    with _step(decisions, "order", clock):
        _order(state, queues)
    with _step(decisions, "admit", clock):
        blocked = _admit_within_guarantees(state, queues, decisions)
    with _step(decisions, "preempt", clock):
        _reclaim(state, queues, blocked, decisions)
    with _step(decisions, "borrow", clock):
        _borrow(state, queues, blocked, decisions)
    with _step(decisions, "backfill", clock):
        _backfill(state, queues, blocked, decisions, snapshot.backfill_depth)
    if snapshot.explain:
        with _step(decisions, "explain", clock):
            _explain(state, queues, blocked, decisions)
    return decisions


# --- state --------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Free:
    gpus: int
    cpus: int
    memory: int


@dataclass(slots=True)
class _Blocked:
    """Why a pool's queue stopped at its head `job` (index `at` in the pool's queue)."""

    job: PendingJob
    at: int
    kind: str  # "room": no nodes free | "guarantee": beyond it, may not borrow | "reclaiming"
    gpu_type: str
    reserved_at: float | None = None
    reserved_nodes: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    pool_used_at: int = 0  # its pool's GPUs of its type still running at reserved_at


class _Nodes:
    """Free resources per node of one partition, with the nodes bucketed by free GPUs so that
    finding room costs the number of buckets, not the number of nodes, when the machine is full.

    Each bucket holds its nodes in the partition's order, whatever order they came in, so that
    where a job lands depends only on what is free, not on how the cycle got there (reservations
    release and restore running jobs; in what order must not move anyone)."""

    def __init__(self, partition: Partition, held: Mapping[str, list[int]]) -> None:
        """`held`: node -> [GPUs, CPUs, memory] the running jobs hold there."""
        self.name = partition.name
        self.nodes, self.index = partition.nodes, partition.node_index
        self.most = partition.most_gpus
        self.free = {}
        # free GPUs -> the indices of the nodes with that many, ascending
        self.buckets: list[list[int]] = [[] for _ in range(self.most + 1)]
        most, buckets = self.most, self.buckets
        for i, n in enumerate(partition.nodes):
            taken = held.get(n.name)
            gpus, cpus, memory = n.gpus, n.cpus, n.memory_bytes
            if taken:
                gpus, cpus, memory = gpus - taken[0], cpus - taken[1], memory - taken[2]
            self.free[n.name] = _Free(gpus, cpus, memory)
            buckets[gpus if 0 <= gpus <= most else (0 if gpus < 0 else most)].append(i)

    def take(self, node: str, gpus: int, cpus: int, memory: int) -> None:
        # Called millions of times a replay (reservations release and restore running jobs):
        # the bucket bounds inline, not min(max(...)).
        free = self.free.get(node)
        if free is None:
            return  # a node no longer in the partition: what runs there holds nothing here
        most = self.most
        before = free.gpus
        after = free.gpus = before - gpus
        free.cpus -= cpus
        free.memory -= memory
        before = before if 0 <= before <= most else (0 if before < 0 else most)
        after = after if 0 <= after <= most else (0 if after < 0 else most)
        if after != before:
            i = self.index[node]
            bucket = self.buckets[before]
            del bucket[bisect_left(bucket, i)]
            insort(self.buckets[after], i)

    def room(self, gpus_per_node: int) -> int:
        """How many nodes have at least this many GPUs free."""
        return sum(map(len, self.buckets[gpus_per_node:]))

    def find(self, request: Request, avoid: frozenset[tuple[str, str]]) -> tuple[str, ...] | None:
        """`request.nodes` nodes that fit, the fullest first (best fit keeps big holes whole),
        the first in the partition's order among equals."""
        found: list[str] = []
        nodes, frees = self.nodes, self.free
        for gpus in range(request.gpus_per_node, self.most + 1):
            for i in self.buckets[gpus]:
                node = nodes[i].name
                free = frees[node]
                if (
                    free.cpus >= request.cpus_per_node
                    and free.memory >= request.memory_per_node
                    and (not avoid or (self.name, node) not in avoid)
                ):
                    found.append(node)
                    if len(found) == request.nodes:
                        return tuple(found)
        return None


class _State:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.partitions = {p.name: p for p in snapshot.partitions}
        self.total: dict[str, int] = defaultdict(int)
        for p in snapshot.partitions:
            self.total[p.gpu_type or NO_GPU] += p.gpus
        self.pools = {p.name: p for p in snapshot.pools}
        self.guarantee = guarantees(snapshot.pools, self.total)
        self.used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.left: dict[int, float] = {a.id: a.remaining_gpu_hours for a in snapshot.allocations}
        self.share_divisor = {(a.project, a.pool): a.size_gpu_hours for a in snapshot.allocations}
        self.demand: dict[str, set[str]] = defaultdict(set)  # gpu type -> pools wanting it
        self.preempting: set[int] = set()  # asked to stop by an earlier cycle (in _hold)
        self.preempted: set[int] = set()  # chosen in this cycle
        # Nodes a reclaiming pool will start its jobs on once its victims have stopped: later
        # steps give them to no one else (else a borrower takes them and the pool reclaims
        # again, and again: found in the simulator as endless preemption).
        self.claimed: frozenset[tuple[str, str]] = frozenset()
        self.explained: set[int] = set()  # queued jobs given their own reason by a step
        self.urgent: set[int] = set()  # flexible jobs that must start now to meet their deadline
        self._type_by_request: dict[Request, str] = {}
        self._ending: list[RunningJob] | None = None
        self.started: list[RunningJob] = []  # admitted in this cycle
        gpu_partitions = [p for p in snapshot.partitions if p.gpu_type]
        self.gpu_types = list(dict.fromkeys(p.gpu_type for p in gpu_partitions))
        # The cheapest GPU-hour a request could be charged: what nomination may assume.
        self.min_weight = min((p.billing_weight for p in gpu_partitions), default=1.0)
        self.default_gpu_type = gpu_partitions[0].gpu_type if gpu_partitions else NO_GPU
        # What every node of every GPU partition could hold: most requests need no closer look.
        self.surely_fits = (
            (*gpu_partitions[0].least, len(gpu_partitions[0].nodes))
            if len(gpu_partitions) == 1 and gpu_partitions[0].nodes
            else (-1, -1, -1, -1)
        )
        self.lent: list[RunningJob] = []  # running jobs borrowed or being preempted: victims
        # Whether any partition offers less than every network: only then does a job's network
        # narrow where it may run.
        self.network_limited = any(p.networks != ALL_NETWORKS for p in snapshot.partitions)
        self.nodes = self._hold(snapshot.running)

    def _hold(self, running: Sequence[RunningJob]) -> dict[str, _Nodes]:
        """The partitions' nodes less what the running jobs hold, summed per node first (a
        cycle's fixed cost, paid for every running job); and what each pool uses."""
        held: dict[str, dict[str, list[int]]] = {name: {} for name in self.partitions}
        types = {name: self.type_of(name) for name in self.partitions}
        used = self.used
        for job in running:
            request, placement = job.request, job.placement
            partition = placement.partition
            on = held.get(partition)
            if on is not None:
                for node in placement.nodes:
                    sums = on.get(node)
                    if sums is None:
                        on[node] = [request.gpus_per_node, request.cpus_per_node,
                                    request.memory_per_node]  # fmt: skip
                    else:
                        sums[0] += request.gpus_per_node
                        sums[1] += request.cpus_per_node
                        sums[2] += request.memory_per_node
            used[job.pool][types.get(partition, NO_GPU)] += request.gpus
            if job.preempting:
                self.preempting.add(job.id)
            if job.borrowed or job.preempting:
                self.lent.append(job)
            if job.allocation is not None and job.allocation in self.left:
                self.left[job.allocation] -= self.charge(request, partition)
        return {p.name: _Nodes(p, held[p.name]) for p in self.snapshot.partitions}

    def want(self, pool: str, request: Request) -> None:
        """Record that `pool` has waiting work of this request's GPU type, which keeps its idle
        guarantee from being lent. Only work its guarantee could ever hold counts: a job larger
        than the whole guarantee must borrow itself, and the guarantee it could never fill
        would otherwise stay idle while every pool waits (with all pools asking for such jobs,
        none would ever start)."""
        gpu_type = self.gpu_type_of(request)
        if request.gpus <= self.guarantee[pool].get(gpu_type, 0) or gpu_type == NO_GPU:
            self.demand[gpu_type].add(pool)

    def type_of(self, partition: str) -> str:
        p = self.partitions.get(partition)
        return (p.gpu_type or NO_GPU) if p else NO_GPU

    def charge(self, request: Request, partition: str | None) -> float:
        """GPU-hours held while it runs: GPUs x time limit x the GPU type's billing weight."""
        p = self.partitions.get(partition or "")
        weight = p.billing_weight if p else 1.0
        return request.gpus * request.time_limit_s / 3600.0 * weight

    def candidates(self, request: Request) -> list[Partition]:
        """Where the request may run: the partition it names, else those of its GPU type (any,
        for CPU-only work); of those, only the ones that offer a network it may have."""
        if request.partition is not None:
            found = self.partitions.get(request.partition)
            result = [found] if found is not None else []
        elif request.gpu_type is not None:
            result = [p for p in self.snapshot.partitions if p.gpu_type == request.gpu_type]
        elif request.gpus_per_node == 0:
            result = list(self.snapshot.partitions)
        else:
            result = [p for p in self.snapshot.partitions if p.gpu_type]
        networks = request.networks
        if networks is None or not self.network_limited:
            return result
        return [p for p in result if not networks.isdisjoint(p.networks)]

    def place(
        self,
        request: Request,
        avoid: frozenset[tuple[str, str]] = frozenset(),
        gpu_type: str | None = None,
    ) -> Placement | None:
        """Nodes for the whole job (gang) in one partition (of `gpu_type` if given), or None."""
        for partition in self.candidates(request):
            if gpu_type is not None and (partition.gpu_type or NO_GPU) != gpu_type:
                continue
            nodes = self.nodes[partition.name].find(request, avoid)
            if nodes is not None:
                return Placement(partition.name, nodes)
        return None

    def place_for(
        self, job: PendingJob, avoid: frozenset[tuple[str, str]] = frozenset()
    ) -> tuple[Placement | None, bool]:
        """Room for the job, preferring a GPU type where its pool is within its guarantee.
        Returns the placement and whether it is within the guarantee (the guarantee is counted
        on the type of the partition the job lands on)."""
        request = job.request
        if request.gpus_per_node == 0:
            return self.place(request, avoid), True
        if request.partition is not None:
            types = [self.type_of(request.partition)]
        else:
            types = [request.gpu_type] if request.gpu_type else self.gpu_types
        beyond = []
        for gpu_type in types:
            if self.within_guarantee(job.pool, gpu_type, request.gpus):
                placement = self.place(request, avoid, gpu_type)
                if placement is not None:
                    return placement, True
            else:
                beyond.append(gpu_type)
        for gpu_type in beyond:  # each type is searched once: a full machine is the usual case
            placement = self.place(request, avoid, gpu_type)
            if placement is not None:
                return placement, False
        return None, False

    def take(self, request: Request, placement: Placement, sign: int = 1) -> None:
        take = self.nodes[placement.partition].take
        gpus, cpus = sign * request.gpus_per_node, sign * request.cpus_per_node
        memory = sign * request.memory_per_node
        for node in placement.nodes:
            take(node, gpus, cpus, memory)

    def gpu_type_of(self, request: Request) -> str:
        """The GPU type whose pool share the request counts against."""
        found = self._type_by_request.get(request)
        if found is None:
            if request.gpus_per_node == 0:
                found = NO_GPU
            elif request.partition is not None:
                found = self.type_of(request.partition)
            elif request.gpu_type is not None:
                found = request.gpu_type
            else:
                types = [p.gpu_type for p in self.snapshot.partitions if p.gpu_type]
                found = types[0] if types else NO_GPU
            self._type_by_request[request] = found
        return found

    def within_guarantee(self, pool: str, gpu_type: str, gpus: int) -> bool:
        if gpu_type == NO_GPU or gpus == 0:
            return True
        return self.used[pool][gpu_type] + gpus <= self.guarantee[pool].get(gpu_type, 0)

    def ratio(self, pool: str) -> float:
        """How much of its guarantee a pool uses (0: none), over all GPU types."""
        owed = sum(self.guarantee[pool].values())
        used = sum(self.used[pool].values())
        return used / owed if owed else float("inf")

    def ending(self) -> list[RunningJob]:
        """Running jobs not preempted in this cycle, and those admitted in it, by the time their
        time limit ends them. (Without this cycle's admissions a head blocked behind them would
        get no reservation, and backfill could pass it freely until the next cycle: the
        simulator's fidelity test found the live controller, which admits batches, deciding
        differently from the same engine asked at every submission.)"""
        if self._ending is None:
            running = self.snapshot.running
            if self.preempted:
                running = tuple(j for j in running if j.id not in self.preempted)
            self._ending = sorted([*running, *self.started], key=_BY_END)
        return self._ending

    def affordable(self, job: PendingJob, placement: Placement, decisions: Decisions) -> bool:
        """Whether the job's allocation still covers its hold; if not, say so."""
        if job.allocation is None:
            return True
        left = self.left.get(job.allocation, 0.0)
        need = self.charge(job.request, placement.partition)
        if left >= need - 1e-9:
            return True
        decisions.reasons[job.id] = _short_allocation(job.allocation, left, need)
        self.explained.add(job.id)
        return False

    def admit(
        self, job: PendingJob, placement: Placement, decisions: Decisions, *, borrowed: bool
    ) -> None:
        self.take(job.request, placement)
        self.started.append(
            RunningJob(
                job.id,
                job.project,
                job.pool,
                job.allocation,
                job.request,
                placement,
                self.now,
                job.preemptible,
                borrowed,
            )
        )
        self._ending = None
        gpu_type = self.type_of(placement.partition)
        self.used[job.pool][gpu_type] += job.request.gpus
        if job.allocation is not None and job.allocation in self.left:
            self.left[job.allocation] -= self.charge(job.request, placement.partition)
        decisions.admissions.append(Admission(job.id, placement, borrowed))


def guarantees(pools: Sequence[Pool], total: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Each pool's guarantee in whole GPUs of each type, by largest remainder (reports use it
    too, so that they judge pools by the numbers the engine gives them)."""
    result: dict[str, dict[str, int]] = {p.name: {} for p in pools}
    for gpu_type, count in total.items():
        if gpu_type == NO_GPU:
            continue
        exact = [(p.guarantee * count, p.name) for p in pools]
        whole = {name: int(share) for share, name in exact}
        owed = min(count, round(sum(share for share, _ in exact)))
        spare = owed - sum(whole.values())
        for _, name in sorted(exact, key=lambda e: (-(e[0] - int(e[0])), e[1]))[: max(0, spare)]:
            whole[name] += 1
        for name, gpus in whole.items():
            result[name][gpu_type] = gpus
    return result


# --- steps --------------------------------------------------------------------------------------
def _nominate(
    state: _State, pending: tuple[PendingJob, ...], decisions: Decisions
) -> dict[str, list[PendingJob]]:
    # The hottest loop of a cycle (every pending job, every cycle): locals, no method calls.
    queues: dict[str, list[PendingJob]] = defaultdict(list)
    reasons = decisions.reasons
    pools, left, demand = state.pools, state.left, state.demand
    queued: list[PendingJob] = []  # what the queues got, in the order the jobs came
    default_type = state.default_gpu_type
    surely = state.surely_fits  # (gpus, cpus, memory, nodes) every node and partition could hold
    limited = state.network_limited
    largest: dict[str, list[tuple[int, int, int]]] | None = None
    possible: dict[Request, bool] = {}
    wanting = demand[default_type]  # the pools wanting the type a request without one counts on
    owed_most = {name: max(owed.values(), default=0) for name, owed in state.guarantee.items()}
    for job in pending:
        pool = job.pool
        if pool not in pools:
            reasons[job.id] = f"waiting: pool {pool!r} does not exist"
            continue
        request = job.request
        gpus = request.gpus_per_node
        if not (
            gpus <= surely[0]
            and request.cpus_per_node <= surely[1]
            and request.memory_per_node <= surely[2]
            and request.nodes <= surely[3]
            and (request.gpu_type is None or request.gpu_type == default_type)
            and request.partition is None
            and (request.networks is None or not limited)
        ):
            fits = possible.get(request)
            if fits is None:
                if largest is None:
                    largest = _largest_shapes(state)
                fits = possible[request] = _could_ever_fit(request, state, largest)
            if not fits:
                reasons[job.id] = _never_fits(request, state, largest or _largest_shapes(state))
                continue
        if not job.preemptible and gpus and request.gpus > owed_most.get(pool, 0):
            never = _beyond_guarantee_for_ever(state, job)  # rare: a closer look
            if never:
                reasons[job.id] = never
                continue
        if job.allocation is not None:
            have = left.get(job.allocation)
            need = gpus * request.nodes * request.time_limit_s / 3600.0 * state.min_weight
            if have is None or have < need - 1e-9:
                reasons[job.id] = _short_allocation(job.allocation, have or 0.0, need)
                continue
        queues[pool].append(job)
        queued.append(job)
        if (
            pool not in wanting
            or not gpus
            or request.gpu_type is not None
            or request.partition is not None
        ):
            state.want(pool, request)  # else its pool already wants the default GPU type
    # Green planning sees only what could start: a job its allocation cannot cover takes no
    # room in the plan. The jobs it holds back leave their queues (and their pools' demand).
    held = plan_green(state, queued, decisions)
    if held:
        demand.clear()
        for pool, queue in queues.items():
            queue[:] = [job for job in queue if job.id not in held]
            for job in queue:
                state.want(pool, job.request)
    return queues


def _beyond_guarantee_for_ever(state: _State, job: PendingJob) -> str | None:
    """Why a job that cannot be preempted can never start, if it needs more GPUs than its
    pool's whole guarantee on every GPU type it may run on (only preemptible jobs borrow):
    set aside with its reason, it does not block its pool's queue for ever."""
    most = _most_owed(job.request, state.guarantee[job.pool], state.type_of, state.gpu_types)
    if job.request.gpus <= most:
        return None
    return (
        f"waiting: it needs {job.request.gpus} GPUs, more than pool {job.pool}'s whole guarantee "
        f"({most}), and only preemptible jobs may borrow beyond it; it can never start as it is"
    )


def _most_owed(
    request: Request,
    owed: Mapping[str, int],
    type_of: Callable[[str], str],
    gpu_types: Sequence[str],
) -> int:
    """The most GPUs `owed` (a pool's guarantee per GPU type) holds of one GPU type that
    `request` may run on."""
    if request.partition is not None:
        types: Sequence[str] = [type_of(request.partition)]
    else:
        types = [request.gpu_type] if request.gpu_type else gpu_types
    return max((owed.get(t, 0) for t in types), default=0)


def most_guaranteed(
    request: Request, pool: str, partitions: Sequence[Partition], pools: Sequence[Pool]
) -> int:
    """The most GPUs `pool` is guaranteed, of one GPU type that `request` may run on: the most
    a job that cannot be preempted may ever hold (only preemptible jobs borrow beyond their
    pool's guarantee). The same figure the admission cycle judges it by (nominate), for
    submission to refuse such a job before it waits for ever."""
    total: dict[str, int] = defaultdict(int)
    types: dict[str, str] = {}
    for p in partitions:
        total[p.gpu_type or NO_GPU] += p.gpus
        types[p.name] = p.gpu_type or NO_GPU
    gpu_types = list(dict.fromkeys(p.gpu_type for p in partitions if p.gpu_type))
    owed = guarantees(pools, total).get(pool, {})
    return _most_owed(request, owed, lambda name: types.get(name, NO_GPU), gpu_types)


def _order(state: _State, queues: dict[str, list[PendingJob]]) -> None:
    """Fair share with memory: the project's decayed use over its allocation's size, then
    priority, then submission time (then id, for one answer).

    Done as stable sorts whose keys are computed in C (attrgetter, map, dict and list lookups):
    a key function in Python per job was most of a cycle at 50,000 waiting jobs.
    """
    in_order = state.snapshot.pending_in_order  # each queue kept the order of `pending`
    for pool, queue in queues.items():
        if not queue:  # green planning held back all it had
            continue
        share = _Shares(state, pool)
        if not in_order:
            queue.sort(key=_BY_ID)  # usually in id order already: linear
            queue.sort(key=_BY_AGE)  # one float key sorts twice as fast as a tuple
            queue.sort(key=_BY_PRIORITY, reverse=True)  # stable, also reversed
        # Alike priorities (the first and last are equal): the first job is the oldest.
        oldest = queue[0].submitted_at if queue[0].priority == queue[-1].priority else None
        keys = list(map(share.__getitem__, map(_PROJECT, queue)))
        if len(set(keys)) > 1:
            by_share = sorted(range(len(queue)), key=keys.__getitem__)  # stable
            queue[:] = list(map(queue.__getitem__, by_share))
        _first_the_starving(state, queue, oldest)
        if state.urgent:  # flexible jobs whose hour has come: first, to keep their deadline
            queue.sort(key=lambda job: job.id not in state.urgent)


def _first_the_starving(state: _State, queue: list[PendingJob], oldest: float | None) -> None:
    """Jobs that have waited `starving_after_s` or longer go first, the longest-waiting first
    (found in the simulator: at sustained overload a heavy project's jobs sort behind an
    endless stream of lighter projects' work and waited over a month). `oldest`: the earliest
    submission in the queue, if known."""
    after = state.snapshot.starving_after_s
    if after is None:
        return
    cutoff = state.now - after
    if oldest is None:
        oldest = min(map(_BY_AGE, queue))
    if oldest > cutoff:
        return  # the usual case: nobody has waited that long (no pass over the queue)
    old = [job for job in queue if job.submitted_at <= cutoff]
    if old:
        old.sort(key=lambda job: (job.submitted_at, job.id))
        rest = [job for job in queue if job.submitted_at > cutoff]
        queue[:] = old + rest


class _Shares(dict[str, float]):
    """project -> its fair-share key in one pool, computed on first use."""

    def __init__(self, state: _State, pool: str) -> None:
        super().__init__()
        self.usage = state.snapshot.usage
        self.divisor = state.share_divisor
        self.pool = pool

    def __missing__(self, project: str) -> float:
        value = self.usage.get(project, 0.0) / (self.divisor.get((project, self.pool)) or 1.0)
        self[project] = value
        return value


_PROJECT = attrgetter("project")
_BY_END = attrgetter("ends_by", "id")
_ID = attrgetter("id")
_BY_ID = attrgetter("id")
_BY_AGE = attrgetter("submitted_at")
_BY_PRIORITY = attrgetter("priority")


def _short_allocation(allocation: int, left: float, need: float) -> str:
    return (
        f"waiting: allocation {allocation} cannot cover it ({max(left, 0.0):.1f} GPU-hours left "
        f"after running jobs, {need:.1f} needed for its time limit)"
    )


def _largest_shapes(state: _State) -> dict[str, list[tuple[int, int, int]]]:
    return {
        p.name: sorted(((n.gpus, n.cpus, n.memory_bytes) for n in p.nodes), reverse=True)
        for p in state.snapshot.partitions
    }


def _never_fits(request: Request, state: _State, largest: dict[str, list]) -> str:  # type: ignore[type-arg]
    """Why a request no partition could ever hold waits for ever: its network, where a
    partition it fits would hold it but offers no network it may have (an operator changed a
    limit or a project's lock since it was submitted); else its size."""
    if request.networks is not None and _could_ever_fit(
        replace(request, networks=None), state, largest
    ):
        offered = ", ".join(f"{p.name} {spelled(p.networks)}" for p in state.snapshot.partitions)
        return (
            f"waiting: no partition it fits offers network {spelled(request.networks)} "
            f"(they offer: {offered}); it can never start as it is"
        )
    return "waiting: no partition has room for it even when empty; it can never start"


def _could_ever_fit(request: Request, state: _State, largest: dict[str, list]) -> bool:  # type: ignore[type-arg]
    for partition in state.candidates(request):
        fitting = sum(
            1
            for gpus, cpus, memory in largest[partition.name]
            if gpus >= request.gpus_per_node
            and cpus >= request.cpus_per_node
            and memory >= request.memory_per_node
        )
        if fitting >= request.nodes:
            return True
    return False


def _admit_within_guarantees(
    state: _State, queues: dict[str, list[PendingJob]], decisions: Decisions
) -> dict[str, _Blocked]:
    """Pools take turns, furthest below their guarantee first; each stops at a head that does
    not fit. Returns the blocked head of each pool that has one."""
    blocked: dict[str, _Blocked] = {}
    position = dict.fromkeys(queues, 0)
    turns = [(state.ratio(pool), pool) for pool in queues if queues[pool]]
    heapq.heapify(turns)
    while turns:
        _, pool = heapq.heappop(turns)
        at = position[pool]
        job = queues[pool][at]
        placement, within = state.place_for(job)
        if placement is None:  # no room on the nodes, whatever the pool's share
            blocked[pool] = _Blocked(job, at, "room", state.gpu_type_of(job.request))
            continue
        if not within:
            blocked[pool] = _Blocked(job, at, "guarantee", state.type_of(placement.partition))
            continue
        if state.affordable(job, placement, decisions):  # else it waits, and does not block
            state.admit(job, placement, decisions, borrowed=False)
        position[pool] = at + 1
        if at + 1 < len(queues[pool]):
            heapq.heappush(turns, (state.ratio(pool), pool))
    return blocked


def _reclaim(
    state: _State,
    queues: dict[str, list[PendingJob]],
    blocked: dict[str, _Blocked],
    decisions: Decisions,
) -> None:
    """Give pools their guarantee back from borrowers: preempt the newest borrowed work, as much
    as the pool's waiting jobs within its guarantee need (at most RECLAIM_DEPTH of them), and
    only where they will start."""
    for pool, head in sorted(blocked.items(), key=lambda item: state.ratio(item[0])):
        if head.kind != "room" or head.gpu_type == NO_GPU:
            continue
        victims = _victims(state, pool, head.gpu_type)
        freed: list[RunningJob] = []  # released in the simulation below
        placed: list[tuple[PendingJob, Placement]] = []
        needed = 0  # how many of `freed` the placed jobs had freed for them
        extra = 0
        for job in queues[pool][head.at : head.at + RECLAIM_DEPTH]:
            if state.gpu_type_of(job.request) != head.gpu_type:
                break
            if not state.within_guarantee(pool, head.gpu_type, job.request.gpus + extra):
                break
            placement = state.place(job.request, state.claimed)
            while placement is None and victims:
                victim = victims.pop(0)
                state.take(victim.request, victim.placement, sign=-1)
                freed.append(victim)
                placement = state.place(job.request, state.claimed)
            if placement is None:
                break
            state.take(job.request, placement)
            placed.append((job, placement))
            extra += job.request.gpus
            needed = len(freed)
        for job, placement in placed:  # undo the simulation: the victims still run
            state.take(job.request, placement, sign=-1)
        for victim in freed:
            state.take(victim.request, victim.placement)
        if not placed:
            continue
        claiming = {(p.partition, node) for _, p in placed for node in p.nodes}
        state.claimed = state.claimed.union(claiming)
        # Only victims on those nodes: one freed on a node no placed job uses made no room (the
        # simulator found more than half the preemptions on Philly were such, each a lost run).
        newly = [
            v
            for v in freed[:needed]
            if v.id not in state.preempting
            and not claiming.isdisjoint((v.placement.partition, node) for node in v.placement.nodes)
        ]
        for victim in newly:
            state.preempted.add(victim.id)
            state.used[victim.pool][head.gpu_type] -= victim.request.gpus
            decisions.preemptions.append(
                Preemption(victim.id, f"preempted: pool {pool} reclaims its guaranteed GPUs")
            )
        head.kind = "reclaiming"
        decisions.reasons[head.job.id] = (
            f"waiting: pool {pool} is reclaiming its guaranteed {head.gpu_type} GPUs from "
            "borrowed work; it starts when that work has stopped"
        )


RECLAIM_DEPTH = 64


def _victims(state: _State, pool: str, gpu_type: str) -> list[RunningJob]:
    """Work that may make room for `pool`: jobs already stopping first, then the newest borrowed
    preemptible jobs of other pools, as long as their pool stays at or above its guarantee."""
    over = {
        name: state.used[name][gpu_type] - state.guarantee[name].get(gpu_type, 0)
        for name in state.pools
    }
    stopping, borrowed = [], []
    for job in state.lent:
        if state.type_of(job.placement.partition) != gpu_type or job.id in state.preempted:
            continue
        if job.id in state.preempting:
            stopping.append(job)
        elif job.borrowed and job.preemptible and job.pool != pool:
            borrowed.append(job)
    result = list(stopping)
    for job in sorted(borrowed, key=lambda j: (-j.started_at, -j.id)):
        if over[job.pool] >= job.request.gpus:
            over[job.pool] -= job.request.gpus
            result.append(job)
    return result


def _within_borrow_limit(state: _State, job: PendingJob, gpu_type: str) -> bool:
    """Whether the job may run beyond its pool's guarantee at all: preemptible, and within the
    pool's borrow limit."""
    if not job.preemptible:
        return False
    limit = state.pools[job.pool].borrow_limit
    if limit is None:
        return True
    owed = state.guarantee[job.pool].get(gpu_type, 0)
    beyond = state.used[job.pool][gpu_type] + job.request.gpus - owed
    return beyond <= limit * state.total.get(gpu_type, 0)


def _may_borrow(state: _State, job: PendingJob, gpu_type: str) -> bool:
    if not _within_borrow_limit(state, job, gpu_type):
        return False
    gpus = job.request.gpus
    beyond = state.used[job.pool][gpu_type] + gpus - state.guarantee[job.pool].get(gpu_type, 0)
    lendable = _lendable(state, job.pool, gpu_type, now=True)
    borrowed = sum(
        max(0, state.used[name][gpu_type] - state.guarantee[name].get(gpu_type, 0))
        for name in state.pools
    )
    over_now = max(0, state.used[job.pool][gpu_type] - state.guarantee[job.pool].get(gpu_type, 0))
    return borrowed - over_now + beyond <= lendable


def _lendable(state: _State, borrower: str, gpu_type: str, *, now: bool) -> int:
    """GPUs of this type other pools may lend `borrower`: the unassigned ones, and the
    guarantees of pools with no waiting work of this type, up to their lend limits; `now`: less
    what those pools use at the moment (else: however much work has ended)."""
    wanting = state.demand.get(gpu_type, set())
    lendable = state.total.get(gpu_type, 0) - sum(
        g.get(gpu_type, 0) for g in state.guarantee.values()
    )
    for name, lender in state.pools.items():
        if name == borrower or name in wanting:
            continue
        owed = state.guarantee[name].get(gpu_type, 0)
        most = int(owed * lender.lend_limit)
        lendable += min(most, max(0, owed - state.used[name][gpu_type])) if now else most
    return lendable


def _lendable_ever(state: _State, job: PendingJob, gpu_type: str) -> int:
    """The most GPUs of this type the job's pool could borrow however much work has ended;
    none for a job that cannot be preempted; at most the pool's borrow limit."""
    if not job.preemptible:
        return 0
    lendable = _lendable(state, job.pool, gpu_type, now=False)
    limit = state.pools[job.pool].borrow_limit
    total = state.total.get(gpu_type, 0)
    return lendable if limit is None else min(lendable, int(limit * total))


def _borrow(
    state: _State,
    queues: dict[str, list[PendingJob]],
    blocked: dict[str, _Blocked],
    decisions: Decisions,
) -> None:
    for pool in sorted(blocked, key=state.ratio):
        head = blocked[pool]
        if head.kind != "guarantee":
            continue
        queue = queues[pool]
        at = head.at
        while at < len(queue):
            job = queue[at]
            placement, within = state.place_for(job, state.claimed)
            if placement is None:
                head.kind = "room"
                break
            if not within and not _may_borrow(state, job, state.type_of(placement.partition)):
                break
            if state.affordable(job, placement, decisions):
                state.admit(job, placement, decisions, borrowed=not within)
            at += 1
        if at >= len(queue):
            del blocked[pool]
        else:
            head.job, head.at, head.gpu_type = queue[at], at, state.gpu_type_of(queue[at].request)


@dataclass(slots=True)
class _Seeking:
    """A blocked head looking for its reserved start (`_reserve`)."""

    pool: str
    head: _Blocked
    need: int  # GPUs
    per_node: int
    nodes: int
    owed: int  # the most its pool may hold of its type at the reserved start
    pool_used: int  # its pool's GPUs of its type still running, as work is released
    typed: list[_Nodes]  # the partitions of its GPU type
    typed_names: frozenset[str]
    # False while its last look found too few nodes of its type with room (in count) and
    # nothing of its type was released since: then it need not look again.
    stale: bool = True


def _reserve(state: _State, blocked: Mapping[str, _Blocked]) -> None:
    """EASY: the earliest time each head can start if running jobs end by their time limits:
    when it fits on the nodes and within what its pool may hold then: its guarantee, and for
    a head blocked by room alone also what it could ever borrow (`_lendable_ever`).

    One pass for all heads: running jobs are taken off the nodes in the order they end, and
    after each, every head still seeking looks whether it could start; the nodes are put back
    at the end. A head looks at the nodes only once enough of them have its GPUs free in count
    (the buckets) and its pool is within what it may hold.
    """
    seeking = []
    for pool, head in blocked.items():
        request = head.job.request
        owed = state.guarantee[pool].get(head.gpu_type, 0)
        pool_used = state.used[pool].get(head.gpu_type, 0)
        # How far beyond its guarantee the pool may be at the reserved start. A head that may
        # not borrow now: not at all. One blocked by room alone: what it could borrow once other
        # work has ended, not infinitely (such a head once reserved nodes it could never use,
        # and work that could have backfilled there waited; BENCHMARKS.md, "A head reserves only
        # what its pool may use").
        if head.gpu_type == NO_GPU:
            owed = pool_used + request.gpus  # no pool limits CPU-only work
        elif head.kind != "guarantee":
            owed += _lendable_ever(state, head.job, head.gpu_type)
        typed = [
            state.nodes[p.name]
            for p in state.snapshot.partitions
            if (p.gpu_type or NO_GPU) == head.gpu_type
        ]
        seeking.append(_Seeking(pool, head, request.gpus, request.gpus_per_node, request.nodes,
                                owed, pool_used, typed, frozenset(n.name for n in typed)))  # fmt: skip
    if not seeking:
        return
    released: list[RunningJob] = []
    for job in state.ending():
        partition = job.placement.partition
        if partition not in state.nodes:
            continue  # on a partition no longer configured: it frees nothing here
        state.take(job.request, job.placement, sign=-1)
        released.append(job)
        found = False
        for s in seeking:
            if partition in s.typed_names:
                s.stale = True
                if job.pool == s.pool:
                    s.pool_used -= job.request.gpus
            if not s.stale or s.pool_used + s.need > s.owed:
                continue
            if sum(nodes.room(s.per_node) for nodes in s.typed) < s.nodes:
                s.stale = False
                continue
            placement = state.place(s.head.job.request)
            if placement is not None:
                s.head.reserved_at = max(job.ends_by, state.now)
                s.head.reserved_nodes = frozenset((placement.partition, n) for n in placement.nodes)
                s.head.pool_used_at = s.pool_used
                found = True
        if found:
            seeking = [s for s in seeking if s.head.reserved_at is None]
            if not seeking:
                break
    for job in released:
        state.take(job.request, job.placement)


def _backfill(
    state: _State,
    queues: dict[str, list[PendingJob]],
    blocked: dict[str, _Blocked],
    decisions: Decisions,
    depth: int,
) -> None:
    heads = list(blocked.values())
    _reserve(state, blocked)
    for head in blocked.values():
        if head.reserved_at is not None:
            decisions.reservations[head.job.id] = head.reserved_at
    reservations = sorted(
        ((h.reserved_at, h.reserved_nodes) for h in heads if h.reserved_at is not None),
        key=itemgetter(0),
    )
    reserved = state.claimed.union(*(nodes for _, nodes in reservations))
    # The nodes a job ending at `ends` must avoid: the claimed ones and those of every
    # reservation it would outlive, the first `bisect_left(starts, ends)` by start. One set per
    # such count, not per job: every job has its own time limit.
    starts = [at for at, _ in reservations]
    avoiding = [state.claimed]
    for _, nodes in reservations:
        avoiding.append(avoiding[-1].union(nodes))
    # Within this step the nodes only fill up, so a request that found no room (avoiding the
    # reserved nodes its time limit would outlive) finds none later either: most waiting jobs
    # share a few requests (on Philly 25 among 700). A request's verdicts are kept under the
    # id() of the first equal request met: the simulator and the controller share one object
    # per request, so most jobs are decided by their request's id() alone, without its hash (a
    # call in Python); a job of another object equal to one met before is looked up by hash.
    no_room: set[int] = set()
    first: dict[Request, int] = {}  # request -> the id() its verdicts are kept under
    for pool, head in blocked.items():
        queue = queues[pool]
        owed = state.guarantee[pool].get(head.gpu_type, 0)
        later = 0  # GPUs of this pool's type that backfilled jobs still hold at the reservation
        # Jobs alike in everything the rules below look at, refused since the last admission of
        # this pool's loop, are refused again: nothing those rules read has changed.
        # (Its request's number, or the number's complement for jobs that cannot be preempted.)
        refused: set[int] = set()
        for job in queue[head.at + 1 : head.at + 1 + depth]:
            shape = id(job.request)
            alike = shape if job.preemptible else ~shape
            if shape in no_room or alike in refused:
                continue
            known = first.setdefault(job.request, shape)
            if known != shape:  # an equal request met before as another object
                shape, alike = known, known if job.preemptible else ~known
                if shape in no_room or alike in refused:
                    continue
            ends = state.now + job.request.time_limit_s
            avoid = avoiding[bisect_left(starts, ends)]
            placement, within = state.place_for(job, avoid)
            if placement is None:
                no_room.add(shape)
                continue
            gpu_type = state.type_of(placement.partition) if job.request.gpus else NO_GPU
            if not within and not _may_borrow(state, job, gpu_type):
                # Idle GPUs that pools want but cannot use before their reserved starts are
                # lent off the reserved nodes. Found in the simulator: at load 0.8 on Philly,
                # small jobs of pools at their guarantee waited days while 20-60 GPUs stood idle.
                if not _within_borrow_limit(state, job, gpu_type):
                    refused.add(alike)
                    continue
                placement = state.place(job.request, reserved, gpu_type)
                if placement is None:
                    refused.add(alike)
                    continue
            # Nor may it use the guarantee the head will need at its reserved start.
            outlives = head.reserved_at is not None and ends > head.reserved_at
            if (
                outlives
                and gpu_type == head.gpu_type != NO_GPU
                and head.pool_used_at + later + job.request.gpus + head.job.request.gpus > owed
            ):
                refused.add(alike)
                continue
            if not state.affordable(job, placement, decisions):
                continue
            state.admit(job, placement, decisions, borrowed=not within)
            refused.clear()
            if outlives and gpu_type == head.gpu_type:
                later += job.request.gpus


def _explain(
    state: _State,
    queues: dict[str, list[PendingJob]],
    blocked: dict[str, _Blocked],
    decisions: Decisions,
) -> None:
    admitted = {a.job_id for a in decisions.admissions}
    reasons = decisions.reasons
    explained = {job_id: reasons[job_id] for job_id in state.explained}
    depth = state.snapshot.backfill_depth  # backfilled jobs come from the first `depth` only
    for pool, head in blocked.items():
        used = state.used[pool].get(head.gpu_type, 0)
        owed = state.guarantee[pool].get(head.gpu_type, 0)
        request = head.job.request
        decisions.heads[pool] = head.job.id
        if head.kind == "guarantee":
            share = (
                f"pool {pool} uses {used} of its {owed} guaranteed {head.gpu_type} GPUs"
                if owed
                else f"pool {pool} has no guaranteed {head.gpu_type} GPUs: it runs on idle ones"
            )
            why = f"waiting: {share}" + (
                "; none are idle to borrow"
                if head.job.preemptible
                else "; only preemptible jobs may borrow beyond it"
            )
        elif head.kind == "room" and request.gpus:
            why = (
                f"waiting for {request.gpus} {head.gpu_type} GPUs on {request.nodes} "
                f"node{'s' if request.nodes > 1 else ''} to free up; pool {pool} uses {used} of "
                f"its {owed} guaranteed"
                if owed
                else f"waiting for {request.gpus} {head.gpu_type} GPUs on {request.nodes} "
                f"node{'s' if request.nodes > 1 else ''} to free up"
            )
        elif head.kind == "room":
            why = "waiting for CPUs or memory to free up on the nodes"
        else:
            why = decisions.reasons.get(head.job.id, "waiting: reclaiming capacity")
        decisions.reasons[head.job.id] = why
        behind = f"waiting behind job {head.job.id}, first in pool {pool}'s queue"
        ids = list(map(_ID, queues[pool][head.at + 1 :]))
        reasons.update(dict.fromkeys(ids, behind))
        for job_id in admitted.intersection(ids[:depth]):
            del reasons[job_id]
    for job_id in state.explained:  # their own reason, e.g. an allocation that cannot cover it
        reasons[job_id] = explained[job_id]
