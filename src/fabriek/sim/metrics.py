"""What a replay delivered: completion times, queueing, utilisation, fairness, pool shares."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from fabriek.sim.simulator import Outcome

SMALL_GPUS = 1  # "small jobs" for the queueing-delay comparison: one GPU


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _dist(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values) if values else 0.0,
        "median": _pct(values, 0.5),
        "p95": _pct(values, 0.95),
        "p99": _pct(values, 0.99),
    }


def summarise(outcome: Outcome, pools: dict[str, float]) -> dict[str, Any]:
    """Seconds throughout. `pools`: each pool's guarantee."""
    done = [r for r in outcome.runs if r.end is not None]
    jct = [r.end - r.job.submit for r in done]  # type: ignore[operator]
    wait = [r.starts[0] - r.job.submit for r in done]
    small_wait = [r.starts[0] - r.job.submit for r in done if r.job.gpus <= SMALL_GPUS]
    first = min((r.job.submit for r in outcome.runs), default=0.0)
    last = max((r.end for r in done), default=first)
    span = max(last - first, 1e-9)
    gpus = outcome.machine.gpus
    used = sum(outcome.pool_gpu_s.values())
    # Finish-time fairness per tenant: its jobs' mean slowdown (completion time over run time);
    # Jain's index over tenants (1: all alike).
    slow: dict[str, list[float]] = defaultdict(list)
    tenant_wait: dict[str, list[float]] = defaultdict(list)
    tenant_pool: dict[str, str] = {}
    for run in done:
        slow[run.job.project].append((run.end - run.job.submit) / run.job.duration)  # type: ignore[operator]
        tenant_wait[run.job.project].append(run.starts[0] - run.job.submit)
        tenant_pool[run.job.project] = run.job.pool
    tenant_slowdown = {t: statistics.fmean(v) for t, v in slow.items()}
    values = list(tenant_slowdown.values())
    jain = (sum(values) ** 2 / (len(values) * sum(v * v for v in values))) if values else 1.0
    flexible = [r for r in done if r.job.deadline is not None]
    return {
        "policy": outcome.policy,
        "jobs": len(outcome.runs),
        "finished": len(done),
        "gpus": gpus,
        "jct_s": _dist(jct),
        "wait_s": _dist(wait),
        "small_jobs_wait_s": _dist(small_wait),
        "makespan_s": span,
        "utilisation": used / (gpus * span),
        # The same from the first to the last submission: without the drain at the end, where
        # a few long jobs run on an emptying machine and any policy's utilisation falls.
        "utilisation_while_arriving": _busy_share(outcome, first),
        "preemptions": sum(r.preemptions for r in outcome.runs),
        "lost_gpu_hours": sum(r.lost_gpu_s for r in outcome.runs) / 3600,
        "tenant_slowdown_jain": jain,
        "tenant_slowdown_worst": max(values) if values else 0.0,
        # Each tenant (project): its pool, its finished jobs, their mean slowdown and wait.
        "tenants": {
            t: {
                "pool": tenant_pool[t],
                "jobs": len(slow[t]),
                "slowdown_mean": tenant_slowdown[t],
                "wait_mean_h": statistics.fmean(tenant_wait[t]) / 3600,
            }
            for t in sorted(slow)
        },
        "flexible": {
            "jobs": len(flexible),
            "deferred": sum(r.deferred for r in flexible),
            "deadlines_missed": deadlines_missed(outcome),
        },
        "pools": {
            name: {
                "guarantee": guarantee,
                "share_used": outcome.pool_gpu_s.get(name, 0.0) / (gpus * span),
                "demand_hours": outcome.pool_demand_s.get(name, 0.0) / 3600,
                "denied_hours": outcome.pool_denied_s.get(name, 0.0) / 3600,
                "guarantee_met_while_waiting": (
                    1 - outcome.pool_denied_s.get(name, 0.0) / outcome.pool_demand_s[name]
                    if outcome.pool_demand_s.get(name)
                    else None
                ),
            }
            for name, guarantee in pools.items()
        },
        "series": series(outcome, first, last, jct),
        "decisions": outcome.decisions,
        "idle_events": outcome.idle,
        "replay_s": outcome.seconds,
        "jobs_per_s": len(outcome.runs) / outcome.seconds if outcome.seconds else 0.0,
    }


POINTS = 300  # per plotted line


def _busy_share(outcome: Outcome, first: float) -> float:
    """Busy GPU-time over GPU-time available from the first to the last submission."""
    last = max((r.job.submit for r in outcome.runs), default=first)
    if last <= first:
        return 0.0
    busy = 0.0
    timeline = outcome.timeline
    for (t0, gpus, _), (t1, _, _) in zip(timeline, [*timeline[1:], (math.inf, 0, 0)], strict=True):
        begin, end = max(t0, first), min(t1, last)
        if end > begin:
            busy += gpus * (end - begin)
    return busy / (outcome.machine.gpus * (last - first))


def _step_means(
    points: list[tuple[float, float]], start: float, end: float, buckets: int = POINTS
) -> list[tuple[float, float]]:
    """The mean of a step function (value from each point until the next) over `buckets` equal
    intervals of [start, end]: (the interval's middle, its mean)."""
    if end <= start or not points:
        return []
    width = (end - start) / buckets
    sums = [0.0] * buckets
    for (t, v), (t_next, _) in zip(points, [*points[1:], (end, 0.0)], strict=True):
        a, b = max(t, start), min(t_next, end)
        while a < b:
            k = min(int((a - start) / width), buckets - 1)
            if k < buckets - 1 and start + (k + 1) * width <= a:  # rounding put `a` a bucket low
                k += 1
            edge = b if k == buckets - 1 else min(b, start + (k + 1) * width)
            sums[k] += v * (edge - a)
            a = edge
    return [(start + (k + 0.5) * width, total / width) for k, total in enumerate(sums)]


def series(outcome: Outcome, first: float, last: float, jct: list[float]) -> dict[str, Any]:
    """What the report plots, each line at most POINTS points: time in days from the start."""
    gpus = outcome.machine.gpus

    def days(line: list[tuple[float, float]], scale: float = 1.0) -> list[list[float]]:
        return [[round((t - first) / 86400, 4), round(v * scale, 5)] for t, v in line]

    busy = [(t, float(b)) for t, b, _ in outcome.timeline]
    waiting = [(t, float(w)) for t, _, w in outcome.timeline]
    pools = {
        name: days(_step_means([(t, float(b[i])) for t, b in outcome.pool_busy], first, last),
                   1 / gpus)
        for i, name in enumerate(outcome.pool_names)
    }  # fmt: skip
    ordered = sorted(jct)
    cdf = [
        [round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 3600, 4), q]
        for q in (i / 100 for i in range(101))
    ] if ordered else []  # fmt: skip
    return {
        "utilisation": days(_step_means(busy, first, last), 1 / gpus),
        "waiting_gpus": days(_step_means(waiting, first, last)),
        "pool_share": pools,
        "jct_cdf_h": cdf,
    }


def deadlines_missed(outcome: Outcome) -> int:
    """Jobs with a deadline that ended after it (or never ended)."""
    return sum(
        r.end is None or r.end > r.job.deadline + 1e-6
        for r in outcome.runs
        if r.job.deadline is not None
    )
