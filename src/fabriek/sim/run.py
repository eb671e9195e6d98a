"""One simulation study: a trace, a machine sized for a load, and policies side by side."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.scheduling.model import STARVING_AFTER_S
from fabriek.sim.green import DEFAULT_START, Grid, deferral_saving, footprint
from fabriek.sim.metrics import summarise
from fabriek.sim.parallel import Send, side_by_side, workers_for
from fabriek.sim.policies import POLICIES, make_policy
from fabriek.sim.simulator import Intensity, Machine, Outcome, Policy, simulate
from fabriek.sim.traces import read_trace, summary
from fabriek.sim.workload import (
    DEFAULT_POOLS,
    PoolShare,
    build,
    gpus_for_load,
    offered_load,
    scale_arrivals,
)


@dataclass(frozen=True, slots=True)
class Study:
    trace: Path
    kind: str = "itp"
    columns: Mapping[str, str] | None = None
    policies: Sequence[str] = ("fabriek",)
    load: float | None = 0.8  # None: the trace's own arrivals on `gpus`
    gpus: int | None = None  # None: sized so that the trace as it is offers `load`
    gpus_per_node: int = 8
    pools: Sequence[PoolShare] = DEFAULT_POOLS
    seed: int = 1
    exact_limits: bool = False
    max_jobs: int | None = None  # the first N jobs only
    grace_s: float = 30.0
    carbon_series: Path | None = None  # an hourly grid series: energy, water and carbon
    # Share of jobs that may wait for greener hours (needs the series), and by how much.
    flexible: float = 0.0
    slack_s: float = 12 * 3600.0
    # fabriek's starvation guard: a job waiting this long goes first in its pool (None: never).
    starving_after_s: float | None = STARVING_AFTER_S
    # fabriek's preempted jobs resume where they stopped (else their run is lost).
    checkpoints: bool = False
    start: datetime = DEFAULT_START  # where in the series the replay begins


Progress = Callable[[str, int, int], None]  # policy, jobs ended, jobs in all
# The offered loads a study may ask for: below a hundredth the machine would be a hundred times
# the trace's need (a typo, and a replay of a machine of millions of GPUs).
MIN_LOAD, MAX_LOAD = 0.01, 100.0


def check_shape(gpus_per_node: int, max_jobs: int | None) -> None:
    """The options `fabriek simulate` and `fabriek plan` share, checked alike."""
    if not 1 <= gpus_per_node <= 64:
        raise InvalidRequest(f"GPUs per node (--gpus-per-node) are 1 to 64; got {gpus_per_node}")
    if max_jobs is not None and max_jobs < 1:
        raise InvalidRequest(f"--max-jobs must be at least 1; got {max_jobs}")


def _on_clock(grid: Grid, offset: float) -> Intensity:
    return lambda t: grid.at(t + offset)


@dataclass(slots=True)
class _Prepared:
    """What every policy's replay of a study starts from (each worker builds its own)."""

    trace: Sequence[Any]
    jobs: list[Any]
    gpus: int
    machine: Machine
    grid: Grid | None
    forecast: Intensity | None
    first: float
    horizon_h: int


def run_study(
    study: Study, progress: Progress | None = None, *, workers: int | None = 1
) -> dict[str, Any]:
    """The workload as built (documented rules, seeded) and each policy's metrics. `workers`:
    policies replayed at once, each in its own process (None: one per core); the result is the
    same either way, but for the replays' own timings (`jobs_per_s`), which are cleanest one at
    a time."""
    unknown = [p for p in study.policies if p not in POLICIES]
    if unknown:
        raise InvalidRequest(
            f"unknown policy {', '.join(unknown)}; use some of {', '.join(POLICIES)}"
        )
    if workers is not None and workers < 1:
        raise InvalidRequest("--workers must be at least 1")
    check_shape(study.gpus_per_node, study.max_jobs)
    if study.load is not None and not MIN_LOAD <= study.load <= MAX_LOAD:
        raise InvalidRequest(
            f"--load is from {MIN_LOAD} to {MAX_LOAD:g} (the offered load, 1: as much work as the "
            f"machine can do), or 0 to keep the trace's arrivals; got {study.load}"
        )
    if study.gpus is not None and (study.gpus <= 0 or study.gpus % study.gpus_per_node):
        raise InvalidRequest(f"--gpus must be a positive multiple of {study.gpus_per_node}")
    if study.flexible and study.carbon_series is None:
        raise InvalidRequest("flexible jobs need a carbon series to plan with (--carbon)")
    prepared = _prepare(study)
    names = list(study.policies)
    workers = workers_for(workers, len(names))
    if workers == 1:
        results = [_metrics(study, prepared, name, progress) for name in names]
    else:
        results = _in_processes(study, names, workers, progress)
    trace, jobs, gpus, machine = prepared.trace, prepared.jobs, prepared.gpus, prepared.machine
    return {
        "trace": {"path": data.label(study.trace), "format": study.kind, **summary(trace)},
        "workload": {
            "jobs": len(jobs),
            "dropped_larger_than_machine": len(trace) - len(jobs),
            "offered_load": offered_load(jobs, gpus),
            "seed": study.seed,
            "time_limits": "exact" if study.exact_limits else "over-requested (x1-10, rounded)",
            "flexible": study.flexible,
            "slack_s": study.slack_s,
            "starving_after_s": study.starving_after_s,
            "checkpoints": study.checkpoints,
            "pools": [
                {"name": p.name, "guarantee": p.guarantee, "projects": p.projects}
                for p in study.pools
            ],
        },
        "machine": {"gpus": gpus, "nodes": machine.nodes, "gpus_per_node": study.gpus_per_node},
        "policies": results,
    }


def _prepare(study: Study) -> _Prepared:
    trace = read_trace(study.trace, kind=study.kind, columns=study.columns)
    if study.max_jobs is not None:
        trace = trace[: study.max_jobs]
    jobs = build(
        trace,
        pools=study.pools,
        seed=study.seed,
        exact_limits=study.exact_limits,
        max_gpus=study.gpus,
        flexible=study.flexible,
        slack_s=study.slack_s,
    )
    if not jobs:
        raise InvalidRequest("no job of the trace fits the machine")
    gpus = study.gpus or gpus_for_load(jobs, study.load or 0.8, study.gpus_per_node)
    if study.load is not None:
        jobs = scale_arrivals(jobs, gpus, study.load)
    machine = Machine(gpus // study.gpus_per_node, study.gpus_per_node)
    grid = Grid.read(study.carbon_series) if study.carbon_series is not None else None
    first = min(j.submit for j in jobs)
    forecast = None
    if grid is not None and study.flexible:
        offset = study.start.timestamp() - first  # the replay's clock on the series' (footprint)
        forecast = _on_clock(grid, offset)
    horizon_h = max(72, math.ceil(study.slack_s / 3600) + 48)
    return _Prepared(trace, jobs, gpus, machine, grid, forecast, first, horizon_h)


def _metrics(
    study: Study, prepared: _Prepared, name: str, progress: Progress | None
) -> dict[str, Any]:
    """One policy's replay of the study, and what it delivered."""
    jobs, machine = prepared.jobs, prepared.machine
    grid, forecast = prepared.grid, prepared.forecast

    def replay(policy: Policy, label: str = name) -> Outcome:
        return simulate(jobs, machine, policy, pools=study.pools, grace_s=study.grace_s,
                        progress=(lambda done, total: progress(label, done, total))
                        if progress else None)  # fmt: skip

    policy = make_policy(name, machine, study.pools, forecast=forecast, epoch=prepared.first,
                         horizon_h=prepared.horizon_h, starving_after_s=study.starving_after_s,
                         checkpoints=study.checkpoints)  # fmt: skip
    outcome = replay(policy)
    metrics = summarise(outcome, {p.name: p.guarantee for p in study.pools})
    if grid is not None:
        metrics["green"] = footprint(outcome, grid, start=study.start)
    if grid is not None and forecast is not None and name == "fabriek":
        # Against the same engine and workload with no forecast to plan with.
        plain = make_policy(name, machine, study.pools, starving_after_s=study.starving_after_s,
                            checkpoints=study.checkpoints)  # fmt: skip
        again = replay(plain, f"{name} (no deferral)")
        green = metrics["green"]
        green.update(deferral_saving(outcome, green["t_co2e"], again, grid, study.start))
    return metrics


# How long each policy's replay takes, roughly (jobs/s in BENCHMARKS.md, inverted and rounded).
REPLAY_COST = {"fabriek": 100, "las": 20, "easy": 5, "fairshare": 5, "sjf": 3, "fifo": 1}


def _in_processes(
    study: Study, names: list[str], workers: int, progress: Progress | None
) -> list[dict[str, Any]]:
    """Each policy replayed in its own process, the slowest first so that the rest run beside
    it rather than after it; its progress sent back as it goes."""
    slowest_first = sorted(names, key=lambda name: -REPLAY_COST.get(name, 0))
    results = side_by_side(
        _replay_apart,
        [(study, name) for name in slowest_first],
        workers,
        (lambda message: progress(*message)) if progress is not None else None,
    )
    done = dict(zip(slowest_first, results, strict=True))
    return [done[name] for name in names]


def _replay_apart(study: Study, name: str, send: Send | None) -> dict[str, Any]:
    """A worker process: the study's workload built again (the same, by its seed), one policy."""

    def report(label: str, done: int, total: int) -> None:
        if send is not None and (done % max(1, total // 200) == 0 or done == total):
            send((label, done, total))

    return _metrics(study, _prepare(study), name, report if send is not None else None)
