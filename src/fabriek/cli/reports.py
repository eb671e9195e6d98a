"""`fabriek usage` and `fabriek report shares`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import typer

from fabriek.cli.output import JsonOpt, console, handled, print_json, shown, utc_iso
from fabriek.cli.output import client as _client
from fabriek.cli.tenancy import _table
from fabriek.core.units import format_duration

report_app = typer.Typer(help="Reports for operators and funders.", no_args_is_help=True)

FromOpt = Annotated[
    str | None, typer.Option("--from", help="Start, ISO 8601 [default: 30 days ago].")
]
ToOpt = Annotated[str | None, typer.Option("--to", help="End, ISO 8601 [default: now].")]


def _period(start: str | None, end: str | None) -> tuple[str, str]:
    now = datetime.now(UTC)
    return (
        utc_iso(start) if start else (now - timedelta(days=30)).isoformat(),
        utc_iso(end) if end else now.isoformat(),
    )


def usage(
    by: Annotated[
        Literal["pool", "organisation", "kind", "project", "factory"],
        typer.Option(help="pool, organisation, kind, project, or factory (one total row)."),
    ] = "project",
    start: FromOpt = None,
    end: ToOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """GPU-hours, jobs, waits, energy at the facility's meter, water and carbon per pool,
    organisation, kind or project (what you may see)."""
    begin, finish = _period(start, end)
    with handled():
        rows = _client().usage(by=by, start=begin, end=finish)
    if json_out:
        print_json(rows)
        return
    table = _table(
        by.upper(), "GPU-HOURS", "JOBS", "STARTED", "MEAN WAIT", "KWH", "WATER L", "KG CO2E"
    )
    for r in rows:
        table.add_row(
            shown(r.key),
            f"{r.gpu_hours:,.2f}",
            str(r.jobs),
            str(r.started),
            "-" if r.mean_wait_s is None else format_duration(int(r.mean_wait_s)),
            f"{r.facility_kwh:,.3g}",
            f"{r.water_l:,.3g}",
            "-" if r.carbon_kg is None else f"{r.carbon_kg:,.3g}",
        )
    console.print(table)


@report_app.command("shares")
def shares(start: FromOpt = None, end: ToOpt = None, json_out: JsonOpt = False) -> None:
    """Operators: per pool, GPU-hours delivered against the guarantee, and how often a pool with
    work waiting had at least its guaranteed GPUs."""
    begin, finish = _period(start, end)
    with handled():
        rows = _client().share_report(start=begin, end=finish)
    if json_out:
        print_json(rows)
        return
    table = _table(
        "POOL",
        "GUARANTEE",
        "GUARANTEED GPU-H",
        "DELIVERED GPU-H",
        "DEMAND H",
        "SERVED",
        "WORST SHORT",
    )
    for r in rows:
        table.add_row(
            shown(r.pool),
            f"{r.guarantee:.0%}",
            f"{r.guaranteed_gpu_hours:,.1f}",
            f"{r.delivered_gpu_hours:,.1f}",
            f"{r.demand_hours:,.1f}",
            "-" if r.served_fraction is None else f"{r.served_fraction:.0%}",
            f"{r.worst_shortfall_gpus} GPUs",
        )
    console.print(table)
