"""The capacity planner: candidate factory sizes within a budget, each simulated on a demand, with
its costs, service and footprint. Every default is in DEFAULTS with its source (docs/planning.md);
all can be overridden."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.core.green import parse_intensity_csv
from fabriek.sim.metrics import summarise
from fabriek.sim.parallel import Send, side_by_side, workers_for
from fabriek.sim.policies import make_policy
from fabriek.sim.simulator import Machine, simulate
from fabriek.sim.traces import read_trace
from fabriek.sim.workload import (
    DEFAULT_POOLS,
    PoolShare,
    SimJob,
    build,
    offered_load,
    scale_arrivals,
)

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True, slots=True)
class Hardware:
    name: str
    gpus_per_node: int
    price_eur: float  # per node, installed
    max_kw: float  # per node, at full load
    idle_fraction: float  # of max_kw drawn when idle
    lifetime_years: float
    # Work a GPU of this kind does in an hour, in the demand's GPU-hours (an H100's: 1). The
    # demand is counted in H100 GPU-hours; on a GPU twice as fast every job runs half as long.
    speed: float = 1.0


@dataclass(frozen=True, slots=True)
class Costs:
    electricity_eur_per_kwh: float
    maintenance_per_year: float  # of the capex
    pue: float
    wue_onsite_l_per_kwh: float  # per IT kWh
    water_offsite_l_per_kwh: float  # per kWh of electricity


# The hardware options a plan can compare (`fabriek plan --hardware h100 --hardware b200`), each
# figure with its source in HARDWARE_SOURCES (docs/planning.md). Prices and speeds are
# assumptions to replace with quotes and one's own benchmarks.
HARDWARE: dict[str, Hardware] = {
    "h100": Hardware("H100 node (8 GPUs)", 8, 350_000.0, 10.2, 0.3, 5.0, 1.0),
    "h200": Hardware("H200 node (8 GPUs)", 8, 420_000.0, 10.2, 0.3, 5.0, 1.3),
    "b200": Hardware("B200 node (8 GPUs)", 8, 500_000.0, 14.3, 0.3, 5.0, 2.0),
}
HARDWARE_SOURCES: dict[str, dict[str, str]] = {
    "h100": {
        "price_eur": "public reports of DGX H100 prices, USD 300,000-500,000 (2023-2024), taken "
                     "at EUR 350,000 installed; an assumption to replace with a quote",
        "max_kw": "NVIDIA DGX H100/H200 user guide: 10.2 kW maximum input",
        "speed": "the reference: the demand is counted in H100 GPU-hours",
    },
    "h200": {
        "price_eur": "no public price at hand; assumed between the H100 and B200 systems' "
                     "reported prices, EUR 420,000 installed; replace with a quote",
        "max_kw": "NVIDIA DGX H100/H200 user guide: 10.2 kW maximum input (the same chassis; "
                  "700 W per GPU, as the H100)",
        "speed": "NVIDIA: the H200 extended the H100's performance by up to 47 % in MLPerf "
                 "Training v4.0 (2024); taken at 1.3 for a mixed workload, an assumption",
    },
    "b200": {
        "price_eur": "a reported USD 515,000 for a DGX B200 (2024-2025), taken at EUR 500,000 "
                     "installed; an assumption to replace with a quote",
        "max_kw": "NVIDIA DGX B200 user guide: 14.3 kW maximum input",
        "speed": "MLPerf Training v4.1 (2024): about twice the H100's per-GPU performance in GPT-3 "
                 "pre-training and Llama 2 70B fine-tuning; taken at 2.0, an assumption",
    },
}  # fmt: skip
DEFAULT_HARDWARE = HARDWARE["h100"]
DEFAULT_COSTS = Costs(0.15, 0.08, 1.2, 0.0, 1.8)
# Where each default comes from (also in docs/planning.md): what is measured, what is assumed.
DEFAULTS: dict[str, tuple[float | str, str]] = {
    "node": (DEFAULT_HARDWARE.name, "an NVIDIA DGX H100-class node: 8 GPUs"),
    "node_price_eur": (DEFAULT_HARDWARE.price_eur, "public reports of DGX H100 prices, USD 300,000-"
                       "500,000 (2023-2024), taken at EUR 350,000 installed; an assumption to replace "
                       "with a quote"),
    "node_max_kw": (DEFAULT_HARDWARE.max_kw, "NVIDIA DGX H100 datasheet: about 10.2 kW maximum"),
    "idle_fraction": (DEFAULT_HARDWARE.idle_fraction, "assumption: an idle node draws 30 % of "
                      "its maximum"),
    "lifetime_years": (DEFAULT_HARDWARE.lifetime_years, "assumption: 5 years, a usual "
                       "depreciation period for HPC systems"),
    "electricity_eur_per_kwh": (DEFAULT_COSTS.electricity_eur_per_kwh, "assumption of the order "
                                "of Dutch non-household prices for large consumers (Eurostat "
                                "nrg_pc_205, 2023-2024); check the current figure"),
    "maintenance_per_year": (DEFAULT_COSTS.maintenance_per_year, "assumption: 8 % of the capex "
                             "a year for support contracts, spares and staff"),
    "pue": (DEFAULT_COSTS.pue, "assumption: a new, liquid-cooled facility (fabriek's facility "
            "default)"),
    "wue_onsite_l_per_kwh": (DEFAULT_COSTS.wue_onsite_l_per_kwh, "assumption: closed-loop liquid "
                             "cooling with dry coolers uses no water on site"),
    "water_offsite_l_per_kwh": (DEFAULT_COSTS.water_offsite_l_per_kwh, "assumption of the order "
                                "of the electricity water intensity factors used by Li et al., "
                                "'Making AI Less Thirsty' (2023); no Dutch figure is at hand"),
    "carbon": ("mean of the series", "the Dutch grid's hourly life-cycle intensity, "
               "shipped with fabriek as nl-grid (src/fabriek/data, Electricity Maps "
               "format)"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Demand:
    trace: Path
    kind: str = "itp"
    gpu_hours_per_year: float | None = None  # None: the trace's own rate (or `users`')
    # Or a number of users: each asks what one of the trace's tenants asks on average a year
    # (Philly's virtual clusters; ITP's tenants are the seeded rule's projects).
    users: int | None = None
    columns: Mapping[str, str] | None = None  # for kind "csv": which column holds what
    pools: Sequence[PoolShare] = DEFAULT_POOLS
    seed: int = 1
    max_jobs: int | None = None


def candidate_nodes(budget: tuple[float, float], hardware: Hardware, count: int) -> list[int]:
    """`count` sizes spread over the budget (capex = nodes x price)."""
    low, high = budget
    if not 0 < low <= high:
        raise InvalidRequest("the budget is a range of euros, low to high, above 0")
    if high < hardware.price_eur:
        raise InvalidRequest(
            f"a budget of at most €{high:,.0f} buys not one {hardware.name}, at €"
            f"{hardware.price_eur:,.0f} each; amounts take k, M or B, e.g. 80M-120M"
        )
    first = max(1, math.ceil(low / hardware.price_eur))
    last = max(first, math.floor(high / hardware.price_eur))
    if count <= 1 or last == first:
        return [first]
    step = (last - first) / (count - 1)
    return sorted({first + round(step * k) for k in range(count)})


def mean_intensity(series: Path) -> float:
    """g CO2e per kWh, the mean of the hourly life-cycle series."""
    try:
        text = data.read_text(series)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the carbon series {series}: {exc.strerror}") from None
    values = [r.life_cycle for r in parse_intensity_csv(text) if r.life_cycle is not None]
    if not values:
        raise InvalidRequest(f"{series}: no life-cycle intensities in it")
    return statistics.fmean(values)


def plan(
    demand: Demand,
    *,
    budget: tuple[float, float],
    sizes: int = 5,
    hardware: Hardware | Sequence[Hardware] = DEFAULT_HARDWARE,
    costs: Costs = DEFAULT_COSTS,
    carbon_series: Path,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Each candidate size of each hardware option: simulated with the fabriek policy on the
    demand, then costed. `workers`: sizes replayed at once, each in its own process (None: one
    per core; 1: all in this process, one after another). The result is the same either way."""
    if workers is not None and workers < 1:
        raise InvalidRequest("--workers must be at least 1")
    if demand.gpu_hours_per_year is not None and demand.users is not None:
        raise InvalidRequest("give the demand as GPU-hours a year or as users, not both")
    if demand.users is not None and demand.users < 1:
        raise InvalidRequest(f"--users must be at least 1; got {demand.users}")
    options = (hardware,) if isinstance(hardware, Hardware) else tuple(hardware)
    if not options:
        raise InvalidRequest("no hardware to plan with")
    names = [h.name for h in options]
    if len(set(names)) < len(names):
        raise InvalidRequest(f"two hardware options have the same name: {', '.join(names)}")
    trace = read_trace(demand.trace, kind=demand.kind, columns=demand.columns)
    if demand.max_jobs is not None:
        trace = trace[: demand.max_jobs]
    intensity = mean_intensity(carbon_series)
    candidates = [(h, n) for h in options for n in candidate_nodes(budget, h, sizes)]
    # Jobs larger than the smallest candidate of any option are left out of every replay: all
    # are compared on the same jobs.
    jobs = build(trace, pools=demand.pools, seed=demand.seed,
                 max_gpus=min(n * h.gpus_per_node for h, n in candidates))  # fmt: skip
    if not jobs:
        raise InvalidRequest(
            "no job of the trace fits the smallest size: each is larger, or asks for no GPU"
        )
    busy = offered_load(jobs, 1)  # GPUs the trace keeps busy on average while it arrives
    if not math.isfinite(busy):
        raise InvalidRequest(
            "the trace's jobs are all submitted at one moment: it gives no rate of demand to "
            "scale (take more of it than --max-jobs gives)"
        )
    trace_rate = busy * HOURS_PER_YEAR
    tenants = len({j.project for j in jobs})
    per_user = trace_rate / tenants
    wanted = demand.gpu_hours_per_year or (
        demand.users * per_user if demand.users is not None else trace_rate
    )
    # On a GPU `speed` times an H100 the same demand is 1/speed of the GPU-hours.
    loads = [wanted / h.speed / (n * h.gpus_per_node * HOURS_PER_YEAR) for h, n in candidates]
    tasks = [(jobs, n, h.gpus_per_node, load, demand.pools, h.speed)
             for (h, n), load in zip(candidates, loads, strict=True)]  # fmt: skip
    workers = workers_for(workers, len(tasks))
    # Progress in jobs replayed over all the sizes: one size of a busy Philly-sized demand takes
    # minutes, too long for a bar that moves only when a size is done.
    total = len(jobs) * len(tasks)
    ended = [0] * len(tasks)

    def report(k: int, done: int) -> None:
        ended[k] = done
        if progress is not None:
            progress(sum(ended), total)

    if workers == 1:
        metrics = [_replay(*task, on_end=lambda done, k=k: report(k, done))
                   for k, task in enumerate(tasks)]  # fmt: skip
    else:  # each size its own replay, one process each, as many at once as there are cores
        metrics = side_by_side(_replay_apart, [(task, k) for k, task in enumerate(tasks)],
                               workers, lambda message: report(*message))  # fmt: skip
    rows = [
        _costed(n, n * h.gpus_per_node, loads[k], metrics[k], h, costs, intensity, wanted)
        for k, (h, n) in enumerate(candidates)
    ]
    return {
        "demand": {"trace": data.label(demand.trace), "format": demand.kind, "jobs": len(jobs),
                   "gpu_hours_per_year": wanted, "trace_gpu_hours_per_year": trace_rate,
                   "users": demand.users, "trace_tenants": tenants,
                   "gpu_hours_per_user_per_year": per_user, "seed": demand.seed},
        "hardware": [{"name": h.name, "gpus_per_node": h.gpus_per_node,
                      "price_eur": h.price_eur, "max_kw": h.max_kw,
                      "idle_fraction": h.idle_fraction, "lifetime_years": h.lifetime_years,
                      "speed": h.speed} for h in options],
        "costs": {"electricity_eur_per_kwh": costs.electricity_eur_per_kwh,
                  "maintenance_per_year": costs.maintenance_per_year, "pue": costs.pue,
                  "wue_onsite_l_per_kwh": costs.wue_onsite_l_per_kwh,
                  "water_offsite_l_per_kwh": costs.water_offsite_l_per_kwh,
                  "carbon_g_per_kwh": intensity},
        "budget_eur": list(budget),
        "sizes": rows,
        "defaults": {k: {"value": v, "source": src} for k, (v, src) in DEFAULTS.items()},
        "hardware_catalogue": {
            key: {"value": {"price_eur": h.price_eur, "max_kw": h.max_kw, "speed": h.speed},
                  "source": HARDWARE_SOURCES[key]}
            for key, h in HARDWARE.items()
        },
    }  # fmt: skip


def _replay(
    jobs: Sequence[SimJob],
    nodes: int,
    gpus_per_node: int,
    load: float,
    pools: Sequence[PoolShare],
    speed: float = 1.0,
    *,
    on_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One candidate size's replay and its metrics. On faster GPUs (`speed`) every job runs, and
    asks for, 1/speed of its time. `on_end(jobs ended)` now and then as it goes."""
    machine = Machine(nodes, gpus_per_node)
    if speed != 1.0:
        jobs = [replace(j, duration=j.duration / speed, time_limit=j.time_limit / speed)
                for j in jobs]  # fmt: skip
    scaled = scale_arrivals(jobs, nodes * gpus_per_node, load)
    step = max(1, len(jobs) // 100)

    def ended(done: int, total: int) -> None:
        if on_end is not None and (done % step == 0 or done == total):
            on_end(done)

    outcome = simulate(scaled, machine, make_policy("fabriek", machine, pools), pools=pools,
                       progress=ended)  # fmt: skip
    return summarise(outcome, {p.name: p.guarantee for p in pools})


def _replay_apart(task: tuple[Any, ...], k: int, send: Send) -> dict[str, Any]:
    """A worker process: one size's replay (the `k`-th), its progress sent back."""
    return _replay(*task, on_end=lambda done: send((k, done)))


def _costed(
    nodes: int,
    gpus: int,
    load: float,
    m: dict[str, Any],
    hardware: Hardware,
    costs: Costs,
    intensity: float,
    wanted: float,
) -> dict[str, Any]:
    # A year of this demand: where the machine finished every job, it served the whole demand,
    # so it was busy `load` of the time. (The replay's own utilisation is lower: it counts the
    # trace's tail, after the last submission, while the machine drains; a year has no tail.)
    # Above a load of 1 it cannot: its queue grows all year, and it serves only what it can run.
    served_all = m["finished"] == m["jobs"]
    utilisation = min(1.0, load) if served_all else min(1.0, m["utilisation"])
    span_h = m["makespan_s"] / 3600
    kw = (
        nodes
        * hardware.max_kw
        * (hardware.idle_fraction + (1 - hardware.idle_fraction) * utilisation)
    )
    it_mwh = kw * HOURS_PER_YEAR / 1000
    facility_mwh = it_mwh * costs.pue
    capex = nodes * hardware.price_eur
    regional = m["pools"].get("regional")
    yearly = (capex / hardware.lifetime_years
              + facility_mwh * 1000 * costs.electricity_eur_per_kwh
              + capex * costs.maintenance_per_year)  # fmt: skip
    # The demand's GPU-hours (H100 GPU-hours) it served in a year: all of them where it finished
    # every job, else what it ran at the replay's utilisation.
    served = (
        wanted * min(1.0, 1.0 / load)
        if served_all
        else gpus * HOURS_PER_YEAR * utilisation * hardware.speed
    )
    return {
        "hardware": hardware.name,
        "nodes": nodes,
        "gpus": gpus,
        "offered_load": load,
        # Whether it can run the demand at all: above a load of 1 the queue grows without end
        # (the replay's waits are those of the trace's span only, and understate a year's).
        "keeps_up": load <= 1.0,
        "capex_eur": capex,
        "opex_eur_per_year": facility_mwh * 1000 * costs.electricity_eur_per_kwh
        + capex * costs.maintenance_per_year,
        "cost_per_gpu_hour_eur": yearly / max(1e-9, gpus * HOURS_PER_YEAR * utilisation),
        # Comparable across hardware: euros per GPU-hour of the demand served, on any GPU.
        "cost_per_demand_gpu_hour_eur": yearly / max(1e-9, served),
        "utilisation": utilisation,
        "wait_p50_h": m["wait_s"]["median"] / 3600,
        "wait_p95_h": m["wait_s"]["p95"] / 3600,
        "regional_share": regional["share_used"] if regional else None,
        # Hours a year in which a waiting job of the regional pool would have fitted within its
        # guarantee and did not run (the replay's, scaled to a year).
        "regional_denied_hours_per_year": regional["denied_hours"] * HOURS_PER_YEAR / span_h
        if regional and span_h > 0
        else None,
        "it_mwh_per_year": it_mwh,
        "facility_mwh_per_year": facility_mwh,
        "water_m3_per_year": it_mwh * 1000
        * (costs.wue_onsite_l_per_kwh + costs.pue * costs.water_offsite_l_per_kwh) / 1000,
        "t_co2e_per_year": facility_mwh * intensity / 1000,
        "finished": m["finished"],
        "jobs": m["jobs"],
    }  # fmt: skip


def with_overrides(base: Any, **changes: Any) -> Any:
    """`base` with the given fields changed (None: left as it is)."""
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
