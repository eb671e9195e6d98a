"""Energy, water and carbon of a replay, on a real grid series: every run's energy placed in the
hours it ran, times that hour's intensity (as the live factory accounts jobs, core/green.py).

The replay's clock starts at `start` in the series (default 2022-01-01 00:00 UTC; a trace without
dates, like ITP, has no calendar of its own); past the series' end it wraps to its beginning.
Each GPU draws `watts_per_gpu` while its job runs (default 1,275 W: an 8-GPU DGX H100-class node's
10.2 kW, with its CPUs, memory and fans, shared by its GPUs); idle GPUs are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.core.green import parse_intensity_csv
from fabriek.sim.metrics import deadlines_missed
from fabriek.sim.simulator import Outcome, Run

WATTS_PER_GPU = 10_200 / 8
DEFAULT_START = datetime(2022, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Grid:
    """An hourly series of life-cycle intensity (g CO2e/kWh), from its first hour."""

    first_hour: float  # unix time
    values: tuple[float, ...]

    @classmethod
    def read(cls, path: Path) -> Grid:
        try:
            rows = parse_intensity_csv(data.read_text(path))
        except OSError as exc:
            raise InvalidRequest(f"cannot read the carbon series {path}: {exc.strerror}") from None
        values = [r.life_cycle for r in rows]
        if not values or any(v is None for v in values):
            raise InvalidRequest(f"{path}: the life-cycle intensity is missing for some hours")
        return cls(rows[0].hour.timestamp(), tuple(v for v in values if v is not None))

    def at(self, unix_hour: float) -> float:
        k = int((unix_hour - self.first_hour) // 3600) % len(self.values)
        return self.values[k]


@dataclass(frozen=True, slots=True)
class Facility:
    pue: float = 1.2
    wue_onsite: float = 0.0  # L per IT kWh
    water_offsite: float = 1.8  # L per kWh of electricity (docs/planning.md says where from)
    watts_per_gpu: float = WATTS_PER_GPU


def mean_intensity(grid: Grid, start: float, seconds: float) -> float:
    """The grid's mean intensity over [start, start + seconds) (unix time), hour by hour."""
    if seconds <= 0:
        return grid.at(start)
    t, stop, total = start, start + seconds, 0.0
    while t < stop:
        edge = min(stop, (t // 3600 + 1) * 3600)
        total += grid.at(t) * (edge - t)
        t = edge
    return total / seconds


def deferral_saving(
    deferred: Outcome, total: float, plain: Outcome, grid: Grid, start: datetime = DEFAULT_START
) -> dict[str, Any]:
    """What deferral saved: a replay with flexible jobs deferred (its footprint `total` t CO2e)
    against the same without a forecast, in all and for the flexible jobs alone; and the
    deferred jobs' effect."""
    total_plain = footprint(plain, grid, start=start)["t_co2e"]
    flex, flex_plain = (
        footprint(o, grid, start=start, runs=[r for r in o.runs if r.job.deadline is not None])[
            "t_co2e"
        ]
        for o in (deferred, plain)
    )
    return {
        "without_deferral_t_co2e": total_plain,
        "saved_t_co2e": total_plain - total,
        "saved_share": (total_plain - total) / total_plain if total_plain else 0.0,
        **_deferral_effect(deferred, grid, start),
        "flexible_t_co2e": flex,
        "flexible_without_deferral_t_co2e": flex_plain,
        "flexible_saved_share": (flex_plain - flex) / flex_plain if flex_plain else 0.0,
        # A busy machine makes some flexible jobs late with or without deferral: what deferral
        # itself costs is the difference.
        "deadlines_missed_without_deferral": deadlines_missed(plain),
    }


def _deferral_effect(outcome: Outcome, grid: Grid, start: datetime) -> dict[str, Any]:
    """For the jobs the engine held back: the mean intensity (weighted by GPU-hours) over their
    last run had it begun at submission, and as it ran."""
    offset = start.timestamp() - min((r.job.submit for r in outcome.runs), default=0.0)
    weight = at_submit = as_run = 0.0
    for run in outcome.runs:
        if not run.deferred or not run.starts:
            continue
        w = run.request.gpus * run.job.duration
        weight += w
        at_submit += w * mean_intensity(grid, run.job.submit + offset, run.job.duration)
        as_run += w * mean_intensity(grid, run.starts[-1] + offset, run.job.duration)
    return {
        "deferred_g_per_kwh_at_submit": at_submit / weight if weight else 0.0,
        "deferred_g_per_kwh_as_run": as_run / weight if weight else 0.0,
    }


def footprint(
    outcome: Outcome,
    grid: Grid,
    facility: Facility = Facility(),
    start: datetime = DEFAULT_START,
    runs: Sequence[Run] | None = None,
) -> dict[str, Any]:
    """IT and facility MWh, m³ of water and t CO2e of every run (lost runs too), or of `runs`
    only, and per day the mean intensity and utilisation, for the report's carbon-against-load
    plot."""
    first = min((r.job.submit for r in outcome.runs), default=0.0)
    offset = start.timestamp() - first
    kwh_by_hour: dict[int, float] = {}
    for run in outcome.runs if runs is None else runs:
        kw = run.request.gpus * facility.watts_per_gpu / 1000
        ends = [*run.stopped, *([run.end] if run.end is not None else [])]
        for began, ended in zip(run.starts, ends, strict=False):
            t, stop = began + offset, ended + offset
            while t < stop:
                hour = int(t // 3600)
                edge = min(stop, (hour + 1) * 3600)
                kwh_by_hour[hour] = kwh_by_hour.get(hour, 0.0) + kw * (edge - t) / 3600
                t = edge
    it_kwh = sum(kwh_by_hour.values())
    carbon_g = sum(kwh * facility.pue * grid.at(h * 3600) for h, kwh in kwh_by_hour.items())
    by_day: dict[int, list[float]] = {}
    gpus = outcome.machine.gpus
    for hour, kwh in kwh_by_hour.items():
        day = by_day.setdefault(hour // 24, [0.0, 0.0, 0])  # type: ignore[list-item]
        day[0] += grid.at(hour * 3600)
        day[1] += kwh / (gpus * facility.watts_per_gpu / 1000)  # busy share of that hour
        day[2] += 1
    first_day = min(by_day, default=0)
    return {
        "start": start.isoformat(),
        "watts_per_gpu": facility.watts_per_gpu,
        "pue": facility.pue,
        "it_mwh": it_kwh / 1000,
        "facility_mwh": it_kwh * facility.pue / 1000,
        "water_m3": it_kwh * (facility.wue_onsite + facility.pue * facility.water_offsite) / 1000,
        "t_co2e": carbon_g / 1e6,
        "mean_g_per_kwh": carbon_g / (it_kwh * facility.pue) if it_kwh else 0.0,
        # (day from the start, mean intensity of its hours with work, their mean utilisation)
        "by_day": [[d - first_day, v[0] / v[2], v[1] / v[2]] for d, v in sorted(by_day.items())],
    }
