"""Green scheduling inside the admission engine: which jobs with a deadline wait for the hours
with the lowest forecast carbon intensity, and when each is planned to start (docs/green.md).

Called by the engine's nominate step; pure like the rest of the engine.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from fabriek.core.green import Window, greenest_start
from fabriek.scheduling.model import Decisions, PendingJob

if TYPE_CHECKING:
    from fabriek.scheduling.engine import _State

GREEN_MARGIN = 0.02  # a later start must be at least 2% greener to be worth the wait
# A planned window starts at least this long before the latest start (GREEN_BUFFER_SHARE of the
# job's time limit, at least GREEN_BUFFER_S): work that cannot wait may take its GPUs first, and
# a job whose hour finds the machine busy can still keep its deadline (30 minutes alone made 9 x
# more jobs late than no deferral in the simulator, docs/green.md).
GREEN_BUFFER_S = 1800.0
GREEN_BUFFER_SHARE = 0.5
GREEN_LOOKAHEAD = 1000  # jobs without a deadline that the green plan places ahead of the rest


def plan_green(state: _State, pending: Sequence[PendingJob], decisions: Decisions) -> set[int]:
    """Jobs with a deadline that wait for greener hours (they hold nothing and block no one
    meanwhile). A plan of each hour's GPUs is made first from what cannot wait: running jobs
    until their time limits, then the jobs whose hour has come and the jobs without a deadline,
    poured into the earliest free capacity. Then, earliest deadline first, each flexible job
    gets the window with the lowest forecast intensity that still has room in the plan. So
    flexible work spreads over the green hours, instead of piling into the greenest one and
    missing its deadlines, and never plans on capacity that work which cannot wait needs.

    A job whose planned start has come, or that must start now to end by its deadline, is not
    held back: it goes first in its pool's queue."""
    snapshot = state.snapshot
    now = state.now
    candidates = []
    for job in pending:
        if job.deadline is None:
            continue
        if now >= job.deadline - job.request.time_limit_s or (
            job.green_start is not None and now >= job.green_start
        ):
            state.urgent.add(job.id)
        elif snapshot.forecast and job.pool in state.pools:
            candidates.append(job)
    held: set[int] = set()
    if not candidates:
        return held
    plan = _GreenPlan(state)
    # What cannot wait is served first: the jobs whose hour has come, then (the first
    # GREEN_LOOKAHEAD of) the jobs without a deadline, in the order they came.
    first = [j for j in pending if j.id in state.urgent]
    others = (j for j in pending if j.deadline is None and j.request.gpus)
    for job in itertools.chain(first, itertools.islice(others, GREEN_LOOKAHEAD)):
        plan.pour(state.gpu_type_of(job.request), job.request.time_limit_s, job.request.gpus)
    for job in sorted(candidates, key=lambda j: (j.deadline, j.id)):
        assert job.deadline is not None
        run = job.request.time_limit_s
        gpus = job.request.gpus
        gpu_type = state.gpu_type_of(job.request)
        window = greenest_start(
            snapshot.forecast,
            snapshot.forecast_start,
            now=now,
            # A window opens a little before the latest start: work that cannot wait may take
            # its GPUs first, and the job still has the buffer to start by its deadline.
            latest_start=job.deadline - run - _buffer(run),
            run_s=run,
            fits=partial(plan.fits, gpu_type, seconds=run, gpus=gpus) if gpus else None,
        )
        if (
            window is None
            or window.start <= now
            or window.intensity > window.now_intensity * (1 - GREEN_MARGIN)
        ):
            # No greener hour worth the wait: it starts as soon as the plan has room, which may
            # be later than the GPUs free now: those are planned for jobs held back earlier.
            at = plan.pour(gpu_type, run, gpus)
            if at is None or at > job.deadline - run - _buffer(run):
                state.urgent.add(job.id)  # later would risk its deadline: first in its queue
            elif at > now and window is not None:
                held.add(job.id)
                decisions.deferrals[job.id] = Window(at, window.now_intensity, window.now_intensity)
                decisions.reasons[job.id] = (
                    f"waiting: the free GPUs are planned for jobs held for greener hours; it "
                    f"starts by {_clock(at, now)}; deadline {_clock(job.deadline, now)}"
                )
            continue
        plan.add(gpu_type, window.start, run, gpus)
        held.add(job.id)
        decisions.deferrals[job.id] = window
        decisions.reasons[job.id] = (
            f"waiting for a greener hour: forecast {window.intensity:.0f} g/kWh at "
            f"{_clock(window.start, now)} vs {window.now_intensity:.0f} now; deadline "
            f"{_clock(job.deadline, now)}"
        )
    return held


def _buffer(run_s: float) -> float:
    return max(GREEN_BUFFER_S, GREEN_BUFFER_SHARE * run_s)


class _GreenPlan:
    """GPUs of each type in use over the forecast's horizon, in 5-minute slots (a job counts in
    every slot it touches: a little conservative, never optimistic at the moment a window opens)."""

    SLOT = 300.0

    def __init__(self, state: _State) -> None:
        self.start = state.snapshot.forecast_start
        self.now = state.now
        self.slots = int(len(state.snapshot.forecast) * 3600 // self.SLOT)
        self.total = state.total
        self.busy: dict[str, list[int]] = defaultdict(lambda: [0] * self.slots)
        # The running jobs, each from now to its time limit: as steps up and down, summed once
        # (adding each job slot by slot was most of a replay with flexible jobs).
        steps: dict[str, list[int]] = defaultdict(lambda: [0] * (self.slots + 1))
        for job in state.snapshot.running:
            if job.request.gpus <= 0:
                continue
            span = self._span(self.now, job.ends_by - self.now)
            first, stop = span.start, min(span.stop, self.slots)
            if first < stop:
                step = steps[state.type_of(job.placement.partition)]
                step[first] += job.request.gpus
                step[stop] -= job.request.gpus
        for gpu_type, step in steps.items():
            self.busy[gpu_type] = list(itertools.accumulate(step[: self.slots]))

    def _span(self, start: float, seconds: float) -> range:
        first = int((max(start, self.start) - self.start) // self.SLOT)
        last = int((start + max(seconds, 1.0) - 1e-6 - self.start) // self.SLOT)
        return range(first, last + 1)

    def add(self, gpu_type: str, start: float, seconds: float, gpus: int) -> None:
        if gpus <= 0:
            return
        busy = self.busy[gpu_type]
        span = self._span(start, seconds)
        first, stop = span.start, min(span.stop, self.slots)
        if first < stop:  # a slice at a time: the plan is rebuilt every cycle, a slot at a time
            busy[first:stop] = map(gpus.__add__, busy[first:stop])  # was most of a replay

    def fits(self, gpu_type: str, start: float, *, seconds: float, gpus: int) -> bool:
        """Whether it has room from `start` for `seconds`, as far as the horizon reaches (a
        job longer than the horizon needs its GPUs until the end of it)."""
        busy, total = self.busy[gpu_type], self.total.get(gpu_type, 0)
        span = self._span(start, seconds)
        if span.start >= self.slots:
            return False
        stop = min(span.stop, self.slots)
        return span.start >= stop or max(busy[span.start : stop]) + gpus <= total

    def pour(self, gpu_type: str, seconds: float, gpus: int) -> float | None:
        """Work that starts as soon as there is room: at the earliest slot where it fits (its
        start; None beyond the horizon)."""
        if gpus <= 0:
            return self.now
        busy, room = self.busy[gpu_type], self.total.get(gpu_type, 0) - gpus
        first = int((self.now - self.start) // self.SLOT)
        # The slots too full for it, in order. A start whose span holds one cannot fit, nor can
        # any later start up to that slot (their spans, as long or longer, hold it too): the
        # next to try is the slot after the last full one in the span.
        full = [i for i in range(max(first, 0), self.slots) if busy[i] > room]
        i = first
        while i < self.slots:
            at = max(self.now, self.start + i * self.SLOT)
            span = self._span(at, seconds)
            if span.start >= self.slots:
                return None
            stop = min(span.stop, self.slots)
            k = bisect_left(full, span.start)
            if k == len(full) or full[k] >= stop:
                self.add(gpu_type, at, seconds, gpus)
                return at
            # (at least one on: a start off the hour can round its span down to a full slot)
            i = max(i + 1, full[bisect_left(full, stop) - 1] + 1)
        return None


def _clock(t: float, now: float) -> str:
    """A time to read in a reason: HH:MM UTC, with the date when not within the next day."""
    at = datetime.fromtimestamp(t, UTC)
    return at.strftime("%H:%M UTC" if t - now < 86400 else "%Y-%m-%d %H:%M UTC")
