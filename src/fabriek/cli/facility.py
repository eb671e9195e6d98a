"""`fabriek facility`: the facility model, grid carbon intensity, meter readings and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from fabriek.cli.output import (
    JsonOpt,
    console,
    err_console,
    fail,
    handled,
    print_json,
    shown,
    utc_iso,
)
from fabriek.cli.output import client as _client
from fabriek.cli.reports import FromOpt, ToOpt, _period
from fabriek.cli.tenancy import _table
from fabriek.core.errors import FabriekError

facility_app = typer.Typer(
    help="The facility: PUE, water, grid carbon intensity, meter readings (operators change them).",
    no_args_is_help=True,
)
carbon_app = typer.Typer(help="Grid carbon intensity series.", no_args_is_help=True)
reading_app = typer.Typer(help="The facility's own meter readings.", no_args_is_help=True)
facility_app.add_typer(carbon_app, name="carbon")
facility_app.add_typer(reading_app, name="reading")


def _read(path: Path) -> str:
    """A CSV file's text, gzip'd (`.gz`) or not."""
    from fabriek.data import read_text

    try:
        return read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", 2)
    except FabriekError as exc:
        fail(exc.message, exc.exit_code)


@facility_app.command("show")
def show(json_out: JsonOpt = False) -> None:
    """The facility model and what grid data is loaded."""
    with handled():
        f = _client().facility()
    if json_out:
        print_json(f)
        return
    console.print(
        f"PUE {f.pue:g}"
        + (f" (a series of {len(f.pue_series)} values is loaded)" if f.pue_series else "")
        + f"; water on site {f.wue_onsite:g} L/kWh, off site {f.water_offsite:g} L/kWh; carbon: "
        f"{f.zone} grid, {f.carbon_column.replace('_', '-')} intensity"
    )
    table = _table("SERIES", "ZONE", "HOURS", "FIRST", "LAST", "COLUMNS")
    for kind, series in (("measured", f.intensity), ("forecast", f.forecasts)):
        for s in series:
            table.add_row(
                kind,
                shown(s.zone),
                f"{s.rows:,}",
                f"{s.first:%Y-%m-%d %H:%M}",
                f"{s.last:%Y-%m-%d %H:%M}",
                ", ".join(s.columns),
            )
    if f.intensity or f.forecasts:
        console.print(table)
    else:
        console.print("no grid carbon intensity loaded: `fabriek facility carbon load FILE`")


@facility_app.command("set")
def set_(
    pue: Annotated[
        float | None, typer.Option(help="Power usage effectiveness (1 or more).")
    ] = None,
    wue_onsite: Annotated[
        float | None, typer.Option(help="Litres of water per IT kWh used on site.")
    ] = None,
    water_offsite: Annotated[
        float | None, typer.Option(help="Litres of water per kWh of electricity, off site.")
    ] = None,
    carbon_column: Annotated[
        Literal["life_cycle", "direct"] | None,
        typer.Option(help="Which grid intensity carbon accounting uses."),
    ] = None,
    zone: Annotated[str | None, typer.Option(help="The grid zone, e.g. NL.")] = None,
) -> None:
    """Operators: change the facility model (applies to jobs that end from now on)."""
    with handled():
        f = _client().update_facility(
            pue=pue,
            wue_onsite=wue_onsite,
            water_offsite=water_offsite,
            carbon_column=carbon_column,
            zone=zone,
        )
    console.print(
        f"PUE {f.pue:g}, water {f.wue_onsite:g} + {f.water_offsite:g} L/kWh, "
        f"{f.zone} {f.carbon_column}"
    )


@facility_app.command("pue")
def load_pue(
    path: Annotated[Path, typer.Argument(help="CSV with columns from, pue.")],
) -> None:
    """Operators: load a PUE series (each value holds from its date until the next)."""
    text = _read(path)
    with handled():
        f = _client().load_pue(text)
    console.print(f"loaded {len(f.pue_series)} PUE values")


@carbon_app.command("load")
def load_carbon(
    series: Annotated[
        str,
        typer.Argument(
            help="Hourly CSV (gzip'd or not): Electricity Maps' export, or hour, "
            "direct_g_per_kwh, life_cycle_g_per_kwh; or `nl-grid`, the Dutch 2021-2023 series "
            "shipped with fabriek.",
            metavar="FILE|nl-grid",
        ),
    ],
    zone: Annotated[str, typer.Option(help="The grid zone it describes.")] = "NL",
    forecast: Annotated[
        bool, typer.Option("--forecast", help="It is a forecast, not measurements.")
    ] = False,
) -> None:
    """Operators: load hourly grid carbon intensity; it replaces the hours it covers."""
    from fabriek import data

    shipped = data.shipped_unless_file(series, "grid")
    path = shipped.location() if shipped is not None else Path(series)
    if not path.exists():
        fail(f"no file {series!r}; give a CSV file, or nl-grid for the shipped Dutch series", 2)
    text = _read(path)
    err_console.print(f"uploading {len(text) / 2**20:.1f} MiB ...", highlight=False)
    with handled():
        s = _client().load_carbon(text, zone=zone, forecast=forecast)
    console.print(
        f"loaded {s.rows:,} hours of {shown(s.zone)} ({', '.join(s.columns)}) from "
        f"{s.first:%Y-%m-%d %H:%M} to {s.last:%Y-%m-%d %H:%M} UTC"
    )


@reading_app.command("add")
def add_reading(
    start: Annotated[str, typer.Option("--from", help="Start of the period, ISO 8601.")],
    end: Annotated[str, typer.Option("--to", help="End of the period, ISO 8601.")],
    total_kwh: Annotated[float, typer.Option(help="The facility's total energy.")],
    it_kwh: Annotated[float, typer.Option(help="Its IT equipment's energy.")],
    water_m3: Annotated[float, typer.Option(help="Water taken in.")],
    renewable_kwh: Annotated[float, typer.Option(help="Renewable energy used.")] = 0.0,
    reused_heat_kwh: Annotated[float, typer.Option(help="Heat delivered for reuse.")] = 0.0,
) -> None:
    """Operators: enter the building's meter readings for a period."""
    with handled():
        r = _client().add_reading(
            starts_at=utc_iso(start),
            ends_at=utc_iso(end),
            total_kwh=total_kwh,
            it_kwh=it_kwh,
            water_m3=water_m3,
            renewable_kwh=renewable_kwh,
            reused_heat_kwh=reused_heat_kwh,
        )
    console.print(f"reading {r.id}: {r.starts_at:%Y-%m-%d} to {r.ends_at:%Y-%m-%d}")


@reading_app.command("list")
def list_readings(json_out: JsonOpt = False) -> None:
    """Operators: the meter readings entered so far."""
    with handled():
        rows = _client().readings()
    if json_out:
        print_json(rows)
        return
    table = _table("ID", "FROM", "TO", "TOTAL KWH", "IT KWH", "WATER M3", "RENEWABLE", "REUSED")
    for r in rows:
        table.add_row(
            str(r.id),
            f"{r.starts_at:%Y-%m-%d %H:%M}",
            f"{r.ends_at:%Y-%m-%d %H:%M}",
            f"{r.total_kwh:,.0f}",
            f"{r.it_kwh:,.0f}",
            f"{r.water_m3:,.1f}",
            f"{r.renewable_kwh:,.0f}",
            f"{r.reused_heat_kwh:,.0f}",
        )
    console.print(table)


@facility_app.command("report")
def report(
    start: FromOpt = None,
    end: ToOpt = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Operators: PUE, WUE, renewable energy factor and energy reuse factor per period (EU
    data-centre reporting), with the IT energy fabriek measured for its jobs beside."""
    begin, finish = _period(start, end)
    with handled():
        result = _client().facility_report(start=begin, end=finish, csv=csv)
    if csv or json_out or output:
        import json

        text = result if csv else json.dumps(result, indent=2)
        if output:
            output.write_text(text if text.endswith("\n") else text + "\n")
            err_console.print(f"wrote {output}", highlight=False)
        else:
            print(text, end="" if text.endswith("\n") else "\n")
        return
    table = _table("FROM", "TO", "PUE", "WUE L/KWH", "REF", "ERF", "JOBS IT KWH", "OF IT")
    for r in result:
        table.add_row(
            r["period_start"][:16],
            r["period_end"][:16],
            f"{r['pue']:.3f}",
            f"{r['wue_l_per_kwh']:.3f}",
            f"{r['renewable_energy_factor']:.1%}",
            f"{r['energy_reuse_factor']:.1%}",
            f"{r['jobs_it_energy_kwh']:,.1f}",
            f"{r['jobs_share_of_it_energy']:.1%}",
        )
    console.print(table)
