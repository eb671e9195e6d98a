"""From a trace to a workload: tenants, pools, requested time limits and load, by documented,
seeded rules (docs/simulator.md). The same seed gives the same workload."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from fabriek.core.errors import InvalidRequest
from fabriek.sim.traces import TraceJob

# Time limits users pick: Slurm-style round values. A requested limit is the job's duration times
# an over-request factor, rounded up to the next of these (capped at the last).
LIMIT_STEPS = (
    900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 12 * 3600, 86400, 2 * 86400, 3 * 86400,
    7 * 86400, 14 * 86400, 30 * 86400,
)  # fmt: skip
# Users over-request by a factor between 1 and this, log-uniformly (most a little, some much).
MAX_OVER_REQUEST = 10.0


@dataclass(frozen=True, slots=True)
class PoolShare:
    name: str
    guarantee: float  # of every GPU type
    projects: int  # how many projects (tenants) submit into it


@dataclass(frozen=True, slots=True)
class SimJob:
    id: int
    project: str
    pool: str
    submit: float
    duration: float
    gpus: int
    time_limit: float  # what the user asked for: the engine and backfill plan with this
    # Flexible work (green scheduling): it may end this much later than if started at once, so
    # its deadline is submit + time_limit + slack. 0: it cannot wait.
    slack: float = 0.0

    @property
    def deadline(self) -> float | None:
        return self.submit + self.time_limit + self.slack if self.slack > 0 else None


DEFAULT_POOLS = (
    PoolShare("regional", 0.25, 8),
    PoolShare("euro", 0.50, 16),
    PoolShare("commercial", 0.25, 8),
)
# As `parse_pools` reads them (the CLI's default).
DEFAULT_POOLS_TEXT = ",".join(f"{p.name}={p.guarantee:g}:{p.projects}" for p in DEFAULT_POOLS)


def parse_pools(text: str) -> tuple[PoolShare, ...]:
    """`regional=0.25:8,euro=0.5:16,commercial=0.25:8`: name=guarantee[:projects]."""
    pools = []
    for part in text.split(","):
        name, sep, rest = part.strip().partition("=")
        share, _, projects = rest.partition(":")
        try:
            pool = PoolShare(name, float(share), int(projects or 8))
        except ValueError:
            raise InvalidRequest(f"cannot read pool {part!r}; use e.g. regional=0.25:8") from None
        if not sep or not name or not 0 <= pool.guarantee <= 1 or pool.projects < 1:
            raise InvalidRequest(f"cannot read pool {part!r}; use e.g. regional=0.25:8")
        pools.append(pool)
    if sum(p.guarantee for p in pools) > 1 + 1e-9:
        raise InvalidRequest("the pools' guarantees add up to more than 1")
    return tuple(pools)


def build(
    trace: Sequence[TraceJob],
    *,
    pools: Sequence[PoolShare] = DEFAULT_POOLS,
    seed: int = 1,
    exact_limits: bool = False,
    max_gpus: int | None = None,
    flexible: float = 0.0,
    slack_s: float = 12 * 3600.0,
) -> list[SimJob]:
    """Tenants and pools, and requested time limits:

    - a trace job with a tenant (Philly's virtual clusters) keeps it as its project; the
      projects are dealt to the pools in turn, in order of first appearance;
    - a trace job without one (ITP) gets a project drawn with Zipf-like weights (the k-th
      project of a pool weighs 1/k, the pools weigh their guarantees): a few heavy users and
      many light ones, as on real clusters;
    - the limit is the duration times a factor drawn log-uniformly from [1, 10], rounded up to a
      round value (15 min, 30 min, 1 h, 2 h, ... 30 days); `exact_limits`: the duration itself.
    Jobs with more GPUs than `max_gpus` (the machine) are dropped; jobs of 0 GPUs or 0 seconds too.
    A share `flexible` of the jobs, drawn with its own seeded generator (the rest of the workload
    is the same with or without), may wait: their deadline is `slack_s` after their time limit
    would end them if started at once (as `fabriek submit --flexible` sets it).
    """
    if not 0 <= flexible <= 1 or slack_s < 0:
        raise InvalidRequest("the flexible share must lie in [0, 1] and the slack be positive")
    rng = random.Random(seed)
    flex_rng = random.Random(f"{seed}-flexible")
    projects = [(p.name, f"{p.name}-{k:02}", p.guarantee / (k + 1)) for p in pools
                for k in range(p.projects)]  # fmt: skip
    if not projects:
        raise InvalidRequest("no pools to put the jobs in")
    names = [(pool, project) for pool, project, _ in projects]
    weights = [w if w > 0 else 1e-9 for _, _, w in projects]
    tenant_to: dict[str, tuple[str, str]] = {}
    jobs = []
    for job in trace:
        if job.gpus <= 0 or job.duration <= 0 or (max_gpus is not None and job.gpus > max_gpus):
            continue
        if job.tenant is not None:
            if job.tenant not in tenant_to:
                pool = pools[len(tenant_to) % len(pools)].name
                tenant_to[job.tenant] = (pool, f"{pool}-{job.tenant}")
            pool, project = tenant_to[job.tenant]
        else:
            pool, project = rng.choices(names, weights)[0]
        limit = job.duration if exact_limits else _requested(job.duration, rng)
        slack = slack_s if flexible and flex_rng.random() < flexible else 0.0
        jobs.append(
            SimJob(len(jobs), project, pool, job.submit, job.duration, job.gpus, limit, slack)
        )
    return jobs


def _requested(duration: float, rng: random.Random) -> float:
    wanted = duration * math.exp(rng.uniform(0.0, math.log(MAX_OVER_REQUEST)))
    for step in LIMIT_STEPS:
        if step >= wanted:
            return float(step)
    return float(max(LIMIT_STEPS[-1], math.ceil(duration)))


def offered_load(jobs: Sequence[SimJob], gpus: int) -> float:
    """GPU-time asked for over GPU-time available from the first to the last submission."""
    if not jobs or gpus <= 0:
        return 0.0
    span = max(j.submit for j in jobs) - min(j.submit for j in jobs)
    work = sum(j.gpus * j.duration for j in jobs)
    return work / (gpus * span) if span > 0 else math.inf


def scale_arrivals(jobs: Sequence[SimJob], gpus: int, load: float) -> list[SimJob]:
    """The same jobs, their submissions spread or squeezed so that the offered load on `gpus`
    GPUs is `load` (durations unchanged)."""
    current = offered_load(jobs, gpus)
    if load <= 0 or not math.isfinite(current) or current <= 0:
        raise InvalidRequest("the load must be above 0, and the trace must span some time")
    factor = current / load
    first = min(j.submit for j in jobs)
    return [
        SimJob(j.id, j.project, j.pool, first + (j.submit - first) * factor, j.duration, j.gpus,
               j.time_limit, j.slack)
        for j in jobs
    ]  # fmt: skip


def gpus_for_load(jobs: Sequence[SimJob], load: float, gpus_per_node: int) -> int:
    """The machine (whole nodes) on which the trace as it is offers `load`."""
    if load <= 0:
        raise InvalidRequest("the load must be above 0")
    needed = offered_load(jobs, 1) / load
    if not math.isfinite(needed):
        raise InvalidRequest(
            "the trace's jobs are all submitted at one moment: no load to size the machine by; "
            "give its size and keep the arrivals (--gpus N --load 0)"
        )
    nodes = max(1, math.ceil(needed / gpus_per_node))
    largest = max(j.gpus for j in jobs)
    return max(nodes * gpus_per_node, math.ceil(largest / gpus_per_node) * gpus_per_node)
