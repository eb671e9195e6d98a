"""The facility model, grid carbon intensity, job footprints and the facility report.

Operators set the model (PUE, water) and load the grid's hourly carbon intensity (and, if they
have them, forecasts); every job is accounted when it ends from the energy its backend metered
per hour. The facility report puts the building's own meter readings (EU data-centre reporting,
Energy Efficiency Directive art. 12, Delegated Regulation 2024/1364) beside the energy fabriek
measured for its jobs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from fabriek.core.errors import Conflict, Forbidden, InvalidRequest
from fabriek.core.green import (
    Facility,
    footprint,
    parse_intensity_csv,
    parse_pue_csv,
    same_hour_in,
)
from fabriek.server.db.models import (
    FacilityPueRow,
    FacilityReadingRow,
    FacilitySettingsRow,
    GridForecastRow,
    GridIntensityRow,
    JobEnergyHourRow,
    JobRow,
)
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor

HOUR = timedelta(hours=1)


def _operator(actor: Actor, what: str) -> None:
    if not actor.is_operator:
        raise Forbidden(f"only operators {what}")


# --- the model ----------------------------------------------------------------------------------
def get_facility(session: Session) -> Facility:
    row = session.scalar(select(FacilitySettingsRow).order_by(FacilitySettingsRow.id.desc()))
    if row is None:
        return Facility()
    return Facility(row.pue, row.wue_onsite, row.water_offsite, row.carbon_column, row.zone)


def set_facility(
    session: Session,
    *,
    actor: Actor,
    now: datetime,
    pue: float | None = None,
    wue_onsite: float | None = None,
    water_offsite: float | None = None,
    carbon_column: str | None = None,
    zone: str | None = None,
) -> Facility:
    """Change what is given; the rest stays. Jobs already accounted keep their figures. Setting
    what holds already changes nothing (and audits nothing)."""
    _operator(actor, "change the facility model")
    old = get_facility(session)
    new = Facility(
        old.pue if pue is None else pue,
        old.wue_onsite if wue_onsite is None else wue_onsite,
        old.water_offsite if water_offsite is None else water_offsite,
        old.carbon_column if carbon_column is None else carbon_column,
        old.zone if zone is None else _zone(zone),
    )
    new.check()
    if new == old:  # nothing changes: no new row, no audit event
        return new
    session.add(FacilitySettingsRow(**asdict(new), updated_by=actor.label, updated_at=now))
    audit.record(
        session,
        actor=actor,
        action="facility.update",
        target_type="facility",
        target_id="facility",
        at=now,
        **asdict(new),
    )
    return new


def _zone(zone: str) -> str:
    if not zone or len(zone) > 16 or not zone.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequest(f"a grid zone is a short code such as NL or DE-LU, not {zone!r}")
    return zone


# --- series -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Loaded:
    zone: str
    rows: int
    first: datetime
    last: datetime
    columns: tuple[str, ...]


def load_intensity(
    session: Session, *, actor: Actor, text: str, zone: str, forecast: bool, now: datetime
) -> Loaded:
    """Load an hourly series (measured, or a forecast), replacing the hours it covers. Parsed
    whole before anything is written: a bad row loads nothing."""
    _operator(actor, "load grid carbon intensity")
    zone = _zone(zone)
    rows = parse_intensity_csv(text)
    table = (GridForecastRow if forecast else GridIntensityRow).__table__
    first, last = rows[0].hour, rows[-1].hour
    session.execute(
        delete(table).where(table.c.zone == zone, table.c.hour >= first, table.c.hour <= last)
    )
    for start in range(0, len(rows), 5000):
        session.execute(
            insert(table),
            [
                {"zone": zone, "hour": r.hour, "direct": r.direct, "life_cycle": r.life_cycle}
                for r in rows[start : start + 5000]
            ],
        )
    columns = tuple(
        c for c in ("direct", "life_cycle") if any(getattr(r, c) is not None for r in rows)
    )
    audit.record(
        session,
        actor=actor,
        action="grid.forecast.load" if forecast else "grid.intensity.load",
        target_type="grid",
        target_id=zone,
        at=now,
        rows=len(rows),
        first=first.isoformat(),
        last=last.isoformat(),
    )
    return Loaded(zone, len(rows), first, last, columns)


def series_summary(session: Session, *, forecast: bool = False) -> list[Loaded]:
    model = GridForecastRow if forecast else GridIntensityRow
    found = session.execute(
        select(
            model.zone,
            func.count(),
            func.min(model.hour),
            func.max(model.hour),
            func.count(model.direct),
            func.count(model.life_cycle),
        ).group_by(model.zone)
    ).all()
    return [
        Loaded(
            zone,
            n,
            first,
            last,
            tuple(c for c, k in (("direct", direct), ("life_cycle", life)) if k),
        )
        for zone, n, first, last, direct, life in found
    ]


def load_pue(session: Session, *, actor: Actor, text: str, now: datetime) -> int:
    """Replace the PUE series (each value holds from its date until the next)."""
    _operator(actor, "load a PUE series")
    series = parse_pue_csv(text)
    session.execute(delete(FacilityPueRow))
    session.add_all(FacilityPueRow(starts_at=start, pue=pue) for start, pue in series)
    audit.record(
        session,
        actor=actor,
        action="facility.pue.load",
        target_type="facility",
        target_id="facility",
        at=now,
        rows=len(series),
    )
    return len(series)


def pue_series(session: Session) -> list[tuple[datetime, float]]:
    return [
        (start, pue)
        for start, pue in session.execute(
            select(FacilityPueRow.starts_at, FacilityPueRow.pue).order_by(FacilityPueRow.starts_at)
        )
    ]


def intensities(
    session: Session, facility: Facility, hours: Iterable[datetime]
) -> dict[datetime, tuple[float, bool]]:
    """hour -> (g/kWh, exact) from the measured series. An hour the series lacks takes the
    same hour of the series' latest year that has it (exact False): the demo's Dutch series
    ends in 2023, and a job today is accounted with 2023's hour of the year."""
    wanted = sorted(set(hours))
    if not wanted:
        return {}
    column = getattr(GridIntensityRow, facility.carbon_column)
    zone = GridIntensityRow.zone == facility.zone
    found = dict(
        session.execute(
            select(GridIntensityRow.hour, column).where(
                zone, GridIntensityRow.hour.in_(wanted), column.is_not(None)
            )
        ).all()
    )
    result = {h: (found[h], True) for h in wanted if h in found}
    missing = [h for h in wanted if h not in found]
    if missing:
        bounds = session.execute(
            select(func.min(GridIntensityRow.hour), func.max(GridIntensityRow.hour)).where(zone)
        ).one()
        if bounds[0] is not None:
            first_year, last_year = bounds[0].year, bounds[1].year
            options: dict[datetime, list[datetime]] = {}  # hour -> same hour, latest year first
            for hour in missing:
                options[hour] = [
                    mapped
                    for year in range(min(last_year, hour.year - 1), first_year - 1, -1)
                    if (mapped := same_hour_in(year, hour)) is not None
                ]
            wanted_mapped = {m for found_list in options.values() for m in found_list}
            got: dict[datetime, float] = {}
            ordered = sorted(wanted_mapped)
            for first in range(0, len(ordered), 5000):
                got.update(
                    session.execute(
                        select(GridIntensityRow.hour, column).where(
                            zone,
                            GridIntensityRow.hour.in_(ordered[first : first + 5000]),
                            column.is_not(None),
                        )
                    ).all()
                )
            for hour, candidates in options.items():
                for mapped in candidates:
                    if mapped in got:
                        result[hour] = (got[mapped], False)
                        break
    return result


def forecast(
    session: Session, facility: Facility, *, start: datetime, hours: int
) -> list[float | None]:
    """Forecast intensity of each hour from `start` (on the hour): the operators' forecast where
    loaded; else seasonal naive, the measured value a week before; else the same hour of the
    series' latest year (a climatology)."""
    wanted = [start + i * HOUR for i in range(hours)]
    column_f = getattr(GridForecastRow, facility.carbon_column)
    given = dict(
        session.execute(
            select(GridForecastRow.hour, column_f).where(
                GridForecastRow.zone == facility.zone,
                GridForecastRow.hour >= wanted[0],
                GridForecastRow.hour <= wanted[-1],
                column_f.is_not(None),
            )
        ).all()
    )
    week = timedelta(days=7)
    rest = [h for h in wanted if h not in given]
    measured = dict(
        session.execute(
            select(GridIntensityRow.hour, getattr(GridIntensityRow, facility.carbon_column)).where(
                GridIntensityRow.zone == facility.zone,
                GridIntensityRow.hour.in_([h - week for h in rest]),
            )
        ).all()
    )
    lacking = [h for h in rest if measured.get(h - week) is None]
    typical = intensities(session, facility, lacking)  # the same hour of the latest year
    result: list[float | None] = []
    for h in wanted:
        if h in given:
            result.append(given[h])
        elif measured.get(h - week) is not None:
            result.append(measured[h - week])
        else:
            result.append(typical[h][0] if h in typical else None)
    return result


# --- a job's footprint --------------------------------------------------------------------------
def account_job(session: Session, job: JobRow) -> None:
    """The footprint of a job that has ended, from the energy it used per hour; and, for a
    job held back for a greener hour, the carbon that saved against starting at once."""
    energy = dict(
        session.execute(
            select(JobEnergyHourRow.hour, JobEnergyHourRow.joules).where(
                JobEnergyHourRow.job_id == job.id
            )
        ).all()
    )
    if not energy:
        return
    facility = get_facility(session)
    result = footprint(
        energy,
        facility,
        pue_at=pue_series(session),
        intensity_at=intensities(session, facility, energy),
    )
    job.facility_kwh, job.water_l = result.facility_kwh, result.water_l
    job.carbon_kg, job.carbon_note = result.carbon_kg, result.carbon_note
    if (
        job.green_start_at is None
        or result.carbon_kg is None
        or job.started_at is None
        or job.preemptions  # its runs moved for other reasons: no fair comparison
    ):
        return
    # Held back: the same energy, each hour moved back by the time it was held for greener
    # hours (not the time it then waited for room), against the grid's intensity then
    # (measured, where the series has it; else the forecast it had).
    held = min(job.started_at, job.green_start_at) - job.submitted_at
    shift = timedelta(hours=round(max(held.total_seconds(), 0.0) / 3600))
    earlier = footprint(
        {hour - shift: joules for hour, joules in energy.items()},
        facility,
        pue_at=pue_series(session),
        intensity_at=intensities(session, facility, (h - shift for h in energy)),
    )
    if earlier.carbon_kg is not None and earlier.facility_kwh:
        job.carbon_saved_kg = earlier.carbon_kg - result.carbon_kg
    elif job.carbon_at_once_g is not None:
        job.carbon_saved_kg = result.facility_kwh * job.carbon_at_once_g / 1000 - result.carbon_kg


# --- facility meter readings and the report -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reading:
    id: int
    starts_at: datetime
    ends_at: datetime
    total_kwh: float
    it_kwh: float
    water_m3: float
    renewable_kwh: float
    reused_heat_kwh: float
    entered_by: str


def add_reading(
    session: Session,
    *,
    actor: Actor,
    starts_at: datetime,
    ends_at: datetime,
    total_kwh: float,
    it_kwh: float,
    water_m3: float,
    renewable_kwh: float = 0.0,
    reused_heat_kwh: float = 0.0,
    now: datetime,
) -> Reading:
    _operator(actor, "enter the facility's meter readings")
    if ends_at <= starts_at:
        raise InvalidRequest("the period must end after it begins")
    for name, value in (
        ("total energy", total_kwh),
        ("IT energy", it_kwh),
        ("water", water_m3),
        ("renewable energy", renewable_kwh),
        ("reused heat", reused_heat_kwh),
    ):
        if not value >= 0 or value == float("inf"):
            raise InvalidRequest(f"the {name} must be a number of 0 or more, got {value}")
    if it_kwh <= 0:
        raise InvalidRequest("the IT energy must be more than 0 (PUE and WUE divide by it)")
    if it_kwh > total_kwh:
        raise InvalidRequest(
            f"the IT energy ({it_kwh:,.0f} kWh) exceeds the facility's total ({total_kwh:,.0f} "
            "kWh): that is a PUE below 1"
        )
    if renewable_kwh > total_kwh:
        raise InvalidRequest("the renewable energy exceeds the total energy")
    overlap = session.scalar(
        select(FacilityReadingRow.id).where(
            FacilityReadingRow.starts_at < ends_at, FacilityReadingRow.ends_at > starts_at
        )
    )
    if overlap is not None:
        raise Conflict(f"the period overlaps reading {overlap}; each period is entered once")
    row = FacilityReadingRow(
        starts_at=starts_at,
        ends_at=ends_at,
        total_kwh=total_kwh,
        it_kwh=it_kwh,
        water_m3=water_m3,
        renewable_kwh=renewable_kwh,
        reused_heat_kwh=reused_heat_kwh,
        entered_by=actor.label,
        entered_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="facility.reading.add",
        target_type="facility_reading",
        target_id=row.id,
        at=now,
        starts_at=starts_at.isoformat(),
        ends_at=ends_at.isoformat(),
    )
    return _reading(row)


def list_readings(session: Session, *, actor: Actor) -> list[Reading]:
    _operator(actor, "read the facility's meter readings")
    return [
        _reading(r)
        for r in session.scalars(select(FacilityReadingRow).order_by(FacilityReadingRow.starts_at))
    ]


def _reading(row: FacilityReadingRow) -> Reading:
    return Reading(
        row.id,
        row.starts_at,
        row.ends_at,
        row.total_kwh,
        row.it_kwh,
        row.water_m3,
        row.renewable_kwh,
        row.reused_heat_kwh,
        row.entered_by,
    )


REPORT_FIELDS = (
    "period_start",
    "period_end",
    "total_energy_kwh",
    "it_energy_kwh",
    "water_input_m3",
    "renewable_energy_kwh",
    "reused_heat_kwh",
    "pue",
    "wue_l_per_kwh",
    "renewable_energy_factor",
    "energy_reuse_factor",
    "jobs_it_energy_kwh",
    "jobs_share_of_it_energy",
)


def facility_report(
    session: Session, *, actor: Actor, start: datetime, end: datetime
) -> list[dict[str, object]]:
    """Per reading in [start, end): the key performance indicators of the Delegated Regulation
    (EU) 2024/1364 (PUE, WUE, renewable energy factor, energy reuse factor) and the IT energy
    fabriek metered for its jobs in the same period, beside the building's own meters."""
    _operator(actor, "read the facility report")
    if end <= start:
        raise InvalidRequest("the period must end after it begins (--from before --to)")
    rows = session.scalars(
        select(FacilityReadingRow)
        .where(FacilityReadingRow.starts_at < end, FacilityReadingRow.ends_at > start)
        .order_by(FacilityReadingRow.starts_at)
    ).all()
    report = []
    for r in rows:
        jobs_j = session.scalar(
            select(func.coalesce(func.sum(JobEnergyHourRow.joules), 0.0)).where(
                JobEnergyHourRow.hour >= r.starts_at, JobEnergyHourRow.hour < r.ends_at
            )
        )
        jobs_kwh = float(jobs_j or 0.0) / 3.6e6
        report.append(
            {
                "period_start": r.starts_at.isoformat(),
                "period_end": r.ends_at.isoformat(),
                "total_energy_kwh": r.total_kwh,
                "it_energy_kwh": r.it_kwh,
                "water_input_m3": r.water_m3,
                "renewable_energy_kwh": r.renewable_kwh,
                "reused_heat_kwh": r.reused_heat_kwh,
                "pue": r.total_kwh / r.it_kwh,
                "wue_l_per_kwh": r.water_m3 * 1000 / r.it_kwh,
                "renewable_energy_factor": r.renewable_kwh / r.total_kwh if r.total_kwh else 0.0,
                "energy_reuse_factor": r.reused_heat_kwh / r.total_kwh if r.total_kwh else 0.0,
                "jobs_it_energy_kwh": jobs_kwh,
                "jobs_share_of_it_energy": jobs_kwh / r.it_kwh,
            }
        )
    return report


def report_csv(report: list[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report)
    return out.getvalue()
