"""Green computing, pure: the facility model, grid carbon intensity series, a job's footprint, and
the greenest window a flexible job may start in.

- Facility energy = IT energy x PUE (of the hour).
- Water = IT energy x (on-site WUE + PUE x water intensity of the electricity off-site), litres.
- Carbon = sum over hours of facility energy x the grid's intensity in that hour.

Nothing here reads a database or a clock.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fabriek.core.errors import InvalidRequest

HOUR = timedelta(hours=1)
COLUMNS = ("life_cycle", "direct")  # which grid intensity carbon accounting uses
MAX_INTENSITY = 2000.0  # g/kWh; the dirtiest grids are about 1,100: beyond this, wrong units


@dataclass(frozen=True, slots=True)
class Facility:
    """The operators' model of the building around the machine."""

    pue: float = 1.2  # constant, unless a PUE series covers the hour
    wue_onsite: float = 0.0  # litres per IT kWh, cooling on site
    water_offsite: float = 0.0  # litres per kWh of electricity, at the power plants
    carbon_column: str = "life_cycle"
    zone: str = "NL"

    def check(self) -> None:
        if not math.isfinite(self.pue) or self.pue < 1:
            raise InvalidRequest(
                f"a PUE below 1 is impossible: the building cannot use less than its IT ({self.pue})"
            )
        if self.pue > 5:
            raise InvalidRequest(f"a PUE of {self.pue} is implausible (5 at most)")
        for name, value in (
            ("on-site WUE", self.wue_onsite),
            ("off-site water", self.water_offsite),
        ):
            if not math.isfinite(value) or not 0 <= value <= 100:
                raise InvalidRequest(f"the {name} must be 0 to 100 litres per kWh, got {value}")
        if self.carbon_column not in COLUMNS:
            raise InvalidRequest(
                f"the carbon column is one of {', '.join(COLUMNS)}, not {self.carbon_column!r}"
            )


# --- series -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IntensityRow:
    hour: datetime  # UTC, on the hour
    direct: float | None
    life_cycle: float | None


# Electricity Maps' hourly export (the Dutch series in the demo data), and a plain form.
_EM_TIME = "Datetime (UTC)"
_EM_DIRECT = "Carbon intensity gCO₂eq/kWh (direct)"
_EM_LIFE_CYCLE = "Carbon intensity gCO₂eq/kWh (Life cycle)"
_PLAIN = ("hour", "direct_g_per_kwh", "life_cycle_g_per_kwh")


def parse_intensity_csv(text: str) -> list[IntensityRow]:
    """Hourly grid carbon intensity in g CO2e/kWh, from Electricity Maps' export or a plain CSV
    with columns hour, direct_g_per_kwh, life_cycle_g_per_kwh (either may be empty, not both).
    Every problem names its row and column; a series with a missing hour is refused whole."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise InvalidRequest("the carbon CSV is empty") from None
    if _EM_TIME in header:
        time_col = header.index(_EM_TIME)
        cols = {
            "direct": header.index(_EM_DIRECT) if _EM_DIRECT in header else None,
            "life_cycle": header.index(_EM_LIFE_CYCLE) if _EM_LIFE_CYCLE in header else None,
        }
        names = {"direct": _EM_DIRECT, "life_cycle": _EM_LIFE_CYCLE}
    elif header[:1] == ["hour"]:
        time_col = 0
        cols = {
            "direct": header.index(_PLAIN[1]) if _PLAIN[1] in header else None,
            "life_cycle": header.index(_PLAIN[2]) if _PLAIN[2] in header else None,
        }
        names = {"direct": _PLAIN[1], "life_cycle": _PLAIN[2]}
    else:
        raise InvalidRequest(
            f"the carbon CSV's header is not one fabriek reads: expected {_EM_TIME!r} "
            f"(Electricity Maps) or {', '.join(_PLAIN)}; got {', '.join(header[:4])}"
        )
    if all(c is None for c in cols.values()):
        units = [h for h in header if "intensity" in h.lower() or "co2" in h.lower()]
        raise InvalidRequest(
            "the carbon CSV has no intensity column in g CO2e/kWh"
            + (f" (found {', '.join(units)}: other units are not converted)" if units else "")
        )
    rows: list[IntensityRow] = []
    for number, record in enumerate(reader, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) <= max(c for c in (time_col, *cols.values()) if c is not None):
            raise InvalidRequest(f"carbon CSV row {number}: too few columns")
        hour = _parse_hour(record[time_col], number, header[time_col])
        values: dict[str, float | None] = {}
        for kind, col in cols.items():
            values[kind] = None if col is None else _intensity(record[col], number, names[kind])
        if values["direct"] is None and values["life_cycle"] is None:
            raise InvalidRequest(f"carbon CSV row {number}: no intensity in either column")
        if rows and hour <= rows[-1].hour:
            raise InvalidRequest(
                f"carbon CSV row {number}, column {header[time_col]!r}: {hour:%Y-%m-%d %H:%M} "
                f"is not after the row before ({rows[-1].hour:%Y-%m-%d %H:%M}): rows must be in "
                "time order, one per hour"
            )
        if rows and hour - rows[-1].hour != HOUR:
            raise InvalidRequest(
                f"carbon CSV row {number}, column {header[time_col]!r}: a gap from "
                f"{rows[-1].hour:%Y-%m-%d %H:%M} to {hour:%Y-%m-%d %H:%M} UTC; the series must "
                "have every hour"
            )
        rows.append(IntensityRow(hour, values["direct"], values["life_cycle"]))
    if not rows:
        raise InvalidRequest("the carbon CSV has a header but no rows")
    return rows


def _parse_hour(text: str, row: int, column: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"carbon CSV row {row}, column {column!r}: {text!r} is not a date and time"
        ) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value.minute or value.second or value.microsecond:
        raise InvalidRequest(
            f"carbon CSV row {row}, column {column!r}: {text!r} is not on the hour"
        )
    return value


def _intensity(text: str, row: int, column: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(
            f"carbon CSV row {row}, column {column!r}: {text!r} is not a number"
        ) from None
    if not math.isfinite(value) or not 0 <= value <= MAX_INTENSITY:
        raise InvalidRequest(
            f"carbon CSV row {row}, column {column!r}: {value} g/kWh is outside 0 to "
            f"{MAX_INTENSITY:.0f} (wrong units? fabriek reads grams CO2e per kWh)"
        )
    return value


def parse_pue_csv(text: str) -> list[tuple[datetime, float]]:
    """A PUE series: columns `from` (ISO date or time, UTC) and `pue`, each value holding until
    the next row's `from`."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
    if header[:2] != ["from", "pue"]:
        raise InvalidRequest(f"the PUE CSV needs the columns from, pue; got {', '.join(header)}")
    result: list[tuple[datetime, float]] = []
    for number, record in enumerate(reader, start=2):
        if not record or all(not c.strip() for c in record):
            continue
        if len(record) < 2:
            raise InvalidRequest(f"PUE CSV row {number}: too few columns")
        start = _parse_hour(record[0] if "T" in record[0] else record[0] + "T00:00", number, "from")
        try:
            pue = float(record[1])
        except ValueError:
            raise InvalidRequest(
                f"PUE CSV row {number}, column 'pue': {record[1]!r} is not a number"
            ) from None
        if not math.isfinite(pue) or not 1 <= pue <= 5:
            raise InvalidRequest(
                f"PUE CSV row {number}, column 'pue': {pue} is outside 1 to 5 (a PUE below 1 "
                "is impossible)"
            )
        if result and start <= result[-1][0]:
            raise InvalidRequest(f"PUE CSV row {number}, column 'from': not after the row before")
        result.append((start, pue))
    if not result:
        raise InvalidRequest("the PUE CSV has no rows")
    return result


# --- footprint ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Footprint:
    it_kwh: float
    facility_kwh: float
    water_l: float
    carbon_kg: float | None  # None: no intensity for any hour it used
    carbon_note: str  # which intensity, and how much of it was mapped from another year


def footprint(
    energy_by_hour: dict[datetime, float],
    facility: Facility,
    *,
    pue_at: Sequence[tuple[datetime, float]] = (),
    intensity_at: dict[datetime, tuple[float, bool]] | None = None,
) -> Footprint:
    """`energy_by_hour`: IT joules per hour. `pue_at`: the PUE series (from, pue), in order.
    `intensity_at`: hour -> (g/kWh, exact), where not exact means mapped from another year."""
    intensity_at = intensity_at or {}
    it = facility_kwh = water = carbon = 0.0
    known = mapped = 0.0  # facility kWh with an intensity, and of those mapped ones
    for hour, joules in energy_by_hour.items():
        kwh = joules / 3.6e6
        pue = pue_for(hour, pue_at, facility.pue)
        it += kwh
        facility_kwh += kwh * pue
        water += kwh * (facility.wue_onsite + pue * facility.water_offsite)
        found = intensity_at.get(hour)
        if found is not None:
            carbon += kwh * pue * found[0] / 1000
            known += kwh * pue
            if not found[1]:
                mapped += kwh * pue
    column = facility.carbon_column.replace("_", "-")
    if facility_kwh and not known:
        note = f"no {column} grid intensity loaded for these hours"
    else:
        note = f"{facility.zone} grid, {column} intensity of each hour"
        if mapped:
            note += f"; {mapped / known:.0%} of it from the same hour of the series' latest year"
        if known < facility_kwh - 1e-12:
            note += f"; {1 - known / facility_kwh:.0%} of the energy had no intensity"
    return Footprint(it, facility_kwh, water, carbon if known else None, note)


def pue_for(hour: datetime, series: Sequence[tuple[datetime, float]], default: float) -> float:
    value = default
    for start, pue in series:
        if start <= hour:
            value = pue
        else:
            break
    return value


def same_hour_in(year: int, hour: datetime) -> datetime | None:
    """The same month, day and hour in `year` (None for 29 February in a common year)."""
    try:
        return hour.replace(year=year)
    except ValueError:
        return None


# --- green windows ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    start: float  # unix seconds: the best start
    intensity: float  # mean forecast intensity over the run if started then
    now_intensity: float  # ... if started at once


def greenest_start(
    forecast: Sequence[float | None],
    forecast_start: float,
    *,
    now: float,
    latest_start: float,
    run_s: float,
    fits: Callable[[float], bool] | None = None,
) -> Window | None:
    """The start, on an hour boundary (or now), with the lowest mean forecast intensity over the
    run, among those from now to `latest_start`. None where the forecast does not cover the run
    started now (nothing to compare with). `forecast[i]` is the intensity of the hour starting
    at forecast_start + i h. `fits(start)`: whether a later start has room (capacity)."""

    def mean_from(start: float) -> float | None:
        end = start + max(run_s, 1.0)
        total = weight = 0.0
        t = start
        while t < end:
            i = int((t - forecast_start) // 3600)
            if i < 0 or i >= len(forecast) or forecast[i] is None:
                return None
            step = min(end, forecast_start + (i + 1) * 3600) - t
            total += forecast[i] * step  # type: ignore[operator]
            weight += step
            t += step
        return total / weight

    at_once = mean_from(now)
    if at_once is None:
        return None
    # Starting at once is the answer when nothing later is greener (and has room); without room
    # now either, it means "as soon as there is room".
    best = Window(now, at_once if fits is None or fits(now) else math.inf, at_once)
    first = forecast_start + (math.floor((now - forecast_start) / 3600) + 1) * 3600
    start = first
    while start <= latest_start:
        mean = mean_from(start)
        if mean is None:
            break
        if mean < best.intensity - 1e-9 and (fits is None or fits(start)):
            best = Window(start, mean, at_once)
        start += 3600
    return best if best.intensity != math.inf else Window(now, at_once, at_once)
