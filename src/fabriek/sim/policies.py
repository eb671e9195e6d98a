"""The baselines fabriek's engine is compared with, on the same machine model (simulator.Free):

- `fifo`: strict first come, first served: the oldest waiting job starts when it fits; nothing
  passes it.
- `easy`: FIFO with EASY backfill (Slurm's sched/backfill in its simplest form): the oldest job
  gets a reservation at the earliest time running jobs' requested limits free enough GPUs for it;
  a later job may start now if it fits and either ends (by its limit) before that reservation
  or leaves the reserved GPUs free.
- `sjf`: shortest job first with perfect knowledge of every job's true duration (an oracle:
  a bound on mean completion time, not a real policy), filling the machine greedily.
- `fairshare`: plain per-tenant fair share: the waiting jobs of the project with the least
  recent GPU use (decayed, a 7-day half-life) first, filling the machine greedily. No pools.
- `las`: Tiresias-style discretised two-dimensional least attained service: a job's attained
  service is its GPUs x the time it has run; jobs in the queue of the least service (below 1
  GPU-hour, then below 10, then the rest) go first, first come first served within a queue; a
  running job that no longer belongs among those the machine can hold is preempted and later
  resumes where it stopped (Tiresias assumes checkpoints). No pools.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Sequence

from fabriek.scheduling.model import STARVING_AFTER_S
from fabriek.sim.simulator import (
    FabriekPolicy,
    Free,
    Intensity,
    Machine,
    Policy,
    Run,
    Tally,
    started_at,
)
from fabriek.sim.workload import PoolShare

Starts = list[tuple[Run, tuple[str, ...]]]


class _StartsOnly(Policy):
    """A policy that only starts waiting jobs on free nodes, and stops none."""

    def idle(self, tally: Tally, free: Free) -> bool:
        return tally.fits_none(free)


class Fifo(_StartsOnly):
    name = "fifo"

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[Starts, list[Run]]:
        starts: Starts = []
        for run in waiting:
            nodes = free.fit(run.request)
            if nodes is None:
                break
            free.take(run.request, nodes)
            starts.append((run, nodes))
        _undo(free, starts)
        return starts, []


class Easy(_StartsOnly):
    name = "easy"

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[Starts, list[Run]]:
        starts: Starts = []
        queue = iter(waiting)  # in order: looked at once, only as far as needed
        head = None
        for run in queue:
            nodes = free.fit(run.request)
            if nodes is None:
                head = run
                break
            free.take(run.request, nodes)
            starts.append((run, nodes))
        if head is not None:
            shadow, extra = self._reservation(now, head, running, starts, free)
            no_room: set[tuple[int, int]] = set()  # shapes that did not fit (free only shrinks)
            for run in queue:
                if free.free_gpus == 0:
                    break
                ends_in_time = now + run.job.time_limit <= shadow
                if not ends_in_time and run.request.gpus > extra:
                    continue
                shape = (run.request.gpus_per_node, run.request.nodes)
                nodes = None if shape in no_room else free.fit(run.request)
                if nodes is None:
                    no_room.add(shape)
                    continue
                if not ends_in_time:
                    extra -= run.request.gpus
                free.take(run.request, nodes)
                starts.append((run, nodes))
        _undo(free, starts)
        return starts, []

    @staticmethod
    def _reservation(
        now: float, head: Run, running: Collection[Run], starting: Starts, free: Free
    ) -> tuple[float, int]:
        """When the head will have room (running jobs ending by their limits, counted in GPUs),
        and how many GPUs beyond its need are free then."""
        ending = sorted(
            [(started_at(r, now) + r.job.time_limit, r.request.gpus) for r in running]
            + [(now + r.job.time_limit, r.request.gpus) for r, _ in starting]
        )
        available = free.free_gpus
        for at, gpus in ending:
            available += gpus
            if available >= head.request.gpus:
                return at, available - head.request.gpus
        return float("inf"), 0


class ShortestFirst(_StartsOnly):
    name = "sjf"

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[Starts, list[Run]]:
        return _greedy(sorted(waiting, key=lambda r: (r.job.duration, r.job.id)), free), []


class FairShare(_StartsOnly):
    name = "fairshare"

    def __init__(self, machine: Machine) -> None:
        self._use = FabriekPolicy(machine, ())  # only its decayed-usage bookkeeping

    def started(self, run: Run, at: float) -> None:
        self._use.started(run, at)

    def finished(self, run: Run, at: float) -> None:
        self._use.finished(run, at)

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[Starts, list[Run]]:
        use = self._use.usage(now)
        ordered = sorted(waiting, key=lambda r: (use.get(r.job.project, 0.0), r.job.submit))
        return _greedy(ordered, free), []


def _greedy(ordered: Collection[Run], free: Free) -> Starts:
    starts: Starts = []
    for run in ordered:
        if free.free_gpus == 0:
            break
        nodes = free.fit(run.request)
        if nodes is not None:
            free.take(run.request, nodes)
            starts.append((run, nodes))
    _undo(free, starts)
    return starts


def _undo(free: Free, starts: Starts) -> None:
    """The policies take room as they decide; the simulator takes it again when it starts them."""
    for run, nodes in starts:
        free.take(run.request, nodes, sign=-1)


class LeastAttained(Policy):
    name = "las"
    resumes = True
    THRESHOLDS = (3600.0, 36000.0)  # GPU-seconds: 1 and 10 GPU-hours

    def decide(
        self, now: float, waiting: Collection[Run], running: Collection[Run], free: Free
    ) -> tuple[Starts, list[Run]]:
        live = [r for r in running if not r.stopping]
        # Which jobs an empty machine would hold, in queue order (least service first, then
        # first come); the others stop or wait. The order is merged lazily from `waiting`, in
        # submission order already, so a full machine stops the look early.
        trial = Free.empty_like(free)
        keep: list[Run] = []
        for run in self._ordered(now, waiting, live):
            if trial.free_gpus == 0:
                break
            nodes = trial.fit(run.request)
            if nodes is not None:
                trial.take(run.request, nodes)
                keep.append(run)
        kept = {run.job.id for run in keep}
        # Those that stop free their GPUs after the grace period: waiting jobs start as room is.
        stops = [r for r in live if r.job.id not in kept]
        on = {r.job.id for r in running}
        starts: Starts = []
        for run in sorted((r for r in keep if r.job.id not in on), key=_arrival):
            nodes = free.fit(run.request)
            if nodes is not None:
                free.take(run.request, nodes)
                starts.append((run, nodes))
        _undo(free, starts)
        return starts, stops

    def _ordered(self, now: float, waiting: Collection[Run], live: list[Run]) -> Iterator[Run]:
        """Waiting and running jobs by (queue, submission, id), produced on demand. `waiting`
        comes in (submission, id) order, as the simulator keeps it."""
        low, high = self.THRESHOLDS

        def level(service: float) -> int:
            return 0 if service < low else 1 if service < high else 2

        running = sorted(
            ((level(r.request.gpus * (r.progress_s + now - started_at(r, now))), r) for r in live),
            key=lambda item: (item[0], *_arrival(item[1])),
        )
        queued = (  # a waiting job's service is what its stopped runs attained
            (r for r in waiting if r.request.gpus * r.progress_s < low),
            (r for r in waiting if low <= r.request.gpus * r.progress_s < high),
            (r for r in waiting if r.request.gpus * r.progress_s >= high),
        )
        for at, waits in enumerate(queued):
            mine = [r for lvl, r in running if lvl == at]
            yield from heapq.merge(mine, waits, key=_arrival)


def _arrival(run: Run) -> tuple[float, int]:
    return run.job.submit, run.job.id


POLICIES = ("fabriek", "fifo", "easy", "sjf", "fairshare", "las")


def make_policy(
    name: str,
    machine: Machine,
    pools: Sequence[PoolShare],
    *,
    forecast: Intensity | None = None,
    epoch: float = 0.0,
    horizon_h: int = 72,
    starving_after_s: float | None = STARVING_AFTER_S,
    checkpoints: bool = False,
) -> Policy:
    """The policy `name`; only fabriek's engine plans with a carbon `forecast` (the baselines
    know no deadlines), and only its preempted jobs resume from `checkpoints` or not (LAS's
    always do, as Tiresias assumes; the other baselines preempt nothing)."""
    if name == "fabriek":
        return FabriekPolicy(machine, pools, forecast=forecast, epoch=epoch, horizon_h=horizon_h,
                             starving_after_s=starving_after_s, checkpoints=checkpoints)  # fmt: skip
    if name == "fifo":
        return Fifo()
    if name == "easy":
        return Easy()
    if name == "sjf":
        return ShortestFirst()
    if name == "fairshare":
        return FairShare(machine)
    if name == "las":
        return LeastAttained()
    from fabriek.core.errors import InvalidRequest

    raise InvalidRequest(f"unknown policy {name!r}; use one of {', '.join(POLICIES)}")
