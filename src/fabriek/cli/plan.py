"""`fabriek plan`: how big must the factory be for this demand and this budget?"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from fabriek.cli.output import console, fail, handled, interruptible
from fabriek.cli.progress import progress
from fabriek.cli.simulate import (
    ColumnsOption,
    FormatOption,
    PoolsOption,
    parse_columns,
    said_format,
)
from fabriek.cli.tenancy import _table
from fabriek.core.errors import InvalidRequest
from fabriek.sim.workload import DEFAULT_POOLS_TEXT, parse_pools


def plan(
    trace: Annotated[
        str,
        typer.Option(
            help="The demand's shape: a job trace, a CSV file or a shipped trace "
            "(itp/cluster01 .. itp/cluster07, philly).",
            show_default=False,
        ),
    ],
    trace_format: FormatOption = None,
    columns: ColumnsOption = None,
    gpu_hours_per_year: Annotated[
        float | None,
        typer.Option(help="The demand to plan for [default: the trace's own rate]."),
    ] = None,
    users: Annotated[
        int | None,
        typer.Option(
            help="Or the demand of this many users, each asking what one of the trace's tenants "
            "asks on average a year."
        ),
    ] = None,
    budget: Annotated[
        str, typer.Option(help="The capital budget, low-high, e.g. 80M-120M (euros).")
    ] = "80M-120M",
    sizes: Annotated[int, typer.Option(help="How many sizes to try within the budget.")] = 5,
    hardware: Annotated[
        list[str] | None,
        typer.Option(
            help="A hardware option to size (repeat it to compare): h100, h200, b200, either "
            "with changes (b200:price=480000,speed=2.2), or one of your own, e.g. "
            "mi300x:price=300000,kw=10.2 (also gpus=, speed=, lifetime=, idle=) [default: h100]."
        ),
    ] = None,
    node_price: Annotated[
        float | None, typer.Option(help="Euros per node, installed [default: h100's 350000].")
    ] = None,
    node_kw: Annotated[
        float | None, typer.Option(help="A node's power at full load, kW [default: 10.2].")
    ] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="GPUs per node [default: 8].")] = None,
    lifetime: Annotated[
        float | None, typer.Option(help="Years the hardware serves [default: 5].")
    ] = None,
    electricity: Annotated[
        float | None, typer.Option(help="Euros per kWh [default: 0.15].")
    ] = None,
    maintenance: Annotated[
        float | None,
        typer.Option(help="Yearly maintenance, a fraction of the capex, 0-1 [default: 0.08]."),
    ] = None,
    pue: Annotated[float | None, typer.Option(help="The facility's PUE [default: 1.2].")] = None,
    wue: Annotated[
        float | None, typer.Option(help="On-site water, litres per IT kWh [default: 0].")
    ] = None,
    water_offsite: Annotated[
        float | None,
        typer.Option(help="Water at the power plants, litres per kWh [default: 1.8]."),
    ] = None,
    carbon: Annotated[
        Path | None,
        typer.Option(
            help="Hourly grid carbon intensity (Electricity Maps CSV) [default: the Dutch "
            "2021-2023 series shipped with fabriek]."
        ),
    ] = None,
    pools: PoolsOption = DEFAULT_POOLS_TEXT,
    seed: Annotated[int, typer.Option(help="Seed of the workload's rules.")] = 1,
    max_jobs: Annotated[
        int | None, typer.Option(help="Only the trace's first N jobs, by submission time.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Sizes replayed at once, each in its own process [default: one per core]."
        ),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write it as JSON.")] = None,
    markdown: Annotated[
        bool, typer.Option(help="Print Markdown tables (for a document) instead.")
    ] = False,
) -> None:
    """Size a factory for a demand: candidate sizes within the budget, each simulated with
    fabriek's engine, with capex, opex, service, energy, water and carbon (docs/planning.md)."""
    from fabriek.data import default_grid
    from fabriek.sim.plan import DEFAULT_COSTS, Demand, with_overrides
    from fabriek.sim.plan import plan as make_plan
    from fabriek.sim.run import check_shape
    from fabriek.sim.traces import resolve

    with handled(), interruptible():
        options = [parse_hardware(text) for text in hardware or ["h100"]]
        flags = {"--node-price": node_price, "--node-kw": node_kw,
                 "--gpus-per-node": gpus_per_node, "--lifetime": lifetime}  # fmt: skip
        given = [flag for flag, value in flags.items() if value is not None]
        if given and len(options) > 1:
            raise InvalidRequest(
                f"{', '.join(given)} changes one hardware option; with several, give the change "
                "with the option, e.g. --hardware b200:price=480000"
            )
        options = [
            with_overrides(o, price_eur=node_price, max_kw=node_kw, gpus_per_node=gpus_per_node,
                           lifetime_years=lifetime)
            for o in options
        ]  # fmt: skip
        costs = with_overrides(
            DEFAULT_COSTS, electricity_eur_per_kwh=electricity, maintenance_per_year=maintenance,
            pue=pue, wue_onsite_l_per_kwh=wue, water_offsite_l_per_kwh=water_offsite,
        )  # fmt: skip
        _check(options, costs, sizes, gpu_hours_per_year)
        for option in options:
            check_shape(option.gpus_per_node, max_jobs)
        series = carbon or default_grid()
        trace_path, kind = resolve(trace, trace_format or ("csv" if columns else None))
        said_format(trace, trace_format, columns, kind)
        demand = Demand(trace_path, kind, gpu_hours_per_year, users=users,
                        pools=parse_pools(pools), seed=seed, max_jobs=max_jobs,
                        columns=parse_columns(columns) if columns is not None else None)  # fmt: skip
        with progress("jobs") as update:
            result = make_plan(
                demand,
                budget=_budget(budget),
                sizes=sizes,
                hardware=options,
                costs=costs,
                carbon_series=series,
                progress=lambda done, total: update("replaying all sizes", done, total),
                workers=workers,
            )
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(result, indent=1))
        except OSError as exc:
            fail(f"cannot write {json_path}: {exc.strerror}", 2)
    (_print_markdown if markdown else _print)(result)


# --hardware NAME:FIELD=VALUE: each field, the Hardware attribute it sets, and its type.
FIELDS: dict[str, tuple[str, type]] = {
    "price": ("price_eur", float), "kw": ("max_kw", float), "gpus": ("gpus_per_node", int),
    "speed": ("speed", float), "lifetime": ("lifetime_years", float),
    "idle": ("idle_fraction", float),
}  # fmt: skip


def parse_hardware(text: str) -> Any:
    """`b200`, `b200:price=480000,speed=2.2` or `mi300x:price=300000,kw=10.2,speed=1.2`: one
    of the catalogue's options, changed or not, or one's own (price and kW required)."""
    from fabriek.sim.plan import DEFAULT_HARDWARE, HARDWARE

    name, _, rest = text.strip().partition(":")
    key = name.lower()
    if not name or not re.fullmatch(r"[\w.+-]+", name):
        raise InvalidRequest(f"cannot read the hardware option {text!r}; use e.g. b200 or "
                             "mi300x:price=300000,kw=10.2")  # fmt: skip
    changes: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        field, sep, value = part.partition("=")
        if not sep or field not in FIELDS:
            raise InvalidRequest(
                f"hardware option {name!r}: cannot read {part!r}; the fields are "
                f"{', '.join(FIELDS)} (e.g. price=480000)"
            )
        attribute, kind = FIELDS[field]
        try:
            changes[attribute] = kind(value)
        except ValueError:
            raise InvalidRequest(
                f"hardware option {name!r}: {field} must be a number, got {value!r}"
            ) from None
    if key in HARDWARE:
        base = HARDWARE[key]
        if changes:  # a variant is named by its changes: b200 and b200:speed=1.5 side by side
            base = replace(base, name=f"{base.name}, {rest.strip().rstrip(',')}")
    elif {"price_eur", "max_kw"} <= changes.keys():
        base = replace(DEFAULT_HARDWARE, name=name)
    else:
        raise InvalidRequest(
            f"no hardware option {name!r}: the catalogue has {', '.join(HARDWARE)}; one of your "
            f"own needs at least a price and a power, e.g. {name}:price=300000,kw=10.2"
        )
    return replace(base, **changes)


def _check(options: list[Any], costs: Any, sizes: int, demand: float | None) -> None:
    if not 1 <= sizes <= 50:
        raise InvalidRequest("--sizes is 1 to 50")
    if demand is not None and not 0 < demand < math.inf:
        raise InvalidRequest(f"--gpu-hours-per-year must be a number above 0; got {demand}")
    for hardware in options:
        where = f" (hardware {hardware.name})"
        for name, value in (("the price (--node-price, price=)", hardware.price_eur),
                            ("the power (--node-kw, kw=)", hardware.max_kw),
                            ("GPUs per node (--gpus-per-node, gpus=)", hardware.gpus_per_node),
                            ("the lifetime (--lifetime, lifetime=)", hardware.lifetime_years),
                            ("the speed (speed=)", hardware.speed)):  # fmt: skip
            if not math.isfinite(value):
                raise InvalidRequest(f"{name} must be a finite number{where}")
            if value <= 0:
                raise InvalidRequest(f"{name} must be above 0{where}")
        if not 0 <= hardware.idle_fraction <= 1:  # NaN fails it too
            raise InvalidRequest(f"idle is a fraction of the maximum power, 0 to 1{where}")
    for name, value in (("--electricity", costs.electricity_eur_per_kwh),
                        ("--maintenance", costs.maintenance_per_year), ("--pue", costs.pue),
                        ("--wue", costs.wue_onsite_l_per_kwh),
                        ("--water-offsite", costs.water_offsite_l_per_kwh)):  # fmt: skip
        if not math.isfinite(value):
            raise InvalidRequest(f"{name} must be a finite number")
    if costs.electricity_eur_per_kwh <= 0:
        raise InvalidRequest("--electricity must be above 0")
    if costs.pue < 1:
        raise InvalidRequest(f"a PUE below 1 is impossible, got {costs.pue}")
    if (
        min(costs.maintenance_per_year, costs.wue_onsite_l_per_kwh, costs.water_offsite_l_per_kwh)
        < 0
    ):
        raise InvalidRequest("maintenance and water figures cannot be negative")
    if costs.maintenance_per_year > 1:
        raise InvalidRequest(
            f"--maintenance is a fraction of the capex a year (0.08: 8 %); got "
            f"{costs.maintenance_per_year}"
        )


def _budget(text: str) -> tuple[float, float]:
    match = re.fullmatch(r"\s*([\d.]+)\s*([kKmMbB]?)\s*-\s*([\d.]+)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise InvalidRequest(f"cannot read the budget {text!r}; use e.g. 80M-120M")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}
    low = float(match[1]) * scale[match[2].lower()]
    high = float(match[3]) * scale[match[4].lower()]
    if not 0 < low <= high:
        raise InvalidRequest(f"the budget {text!r} must go from a low to a high amount above 0")
    return low, high


COLUMNS = ("nodes", "GPUs", "capex M€", "opex M€/yr", "€/GPU-h", "load", "utilisation",
           "wait p50 h", "wait p95 h", "regional share", "regional denied h/yr", "MWh/yr",
           "water m³/yr", "t CO2e/yr")  # fmt: skip
# With several hardware options: which one, and a cost comparable across them.
COMPARED = ("hardware", "€/H100-h")


def _columns(compared: bool) -> tuple[str, ...]:
    return (COMPARED[0], *COLUMNS[:5], COMPARED[1], *COLUMNS[5:]) if compared else COLUMNS


def _cells(row: dict[str, Any], compared: bool) -> list[str]:
    denied = row["regional_denied_hours_per_year"]
    cells = [
        str(row["nodes"]), str(row["gpus"]), f"{row['capex_eur'] / 1e6:.1f}",
        f"{row['opex_eur_per_year'] / 1e6:.2f}", f"{row['cost_per_gpu_hour_eur']:.2f}",
        f"{row['offered_load']:.2f}" + ("" if row["keeps_up"] else "*"),
        f"{row['utilisation']:.1%}", f"{row['wait_p50_h']:.2f}", f"{row['wait_p95_h']:.1f}",
        "-" if row["regional_share"] is None else f"{row['regional_share']:.1%}",
        "-" if denied is None else f"{denied:,.0f}", f"{row['facility_mwh_per_year']:,.0f}",
        f"{row['water_m3_per_year']:,.0f}", f"{row['t_co2e_per_year']:,.0f}",
    ]  # fmt: skip
    if compared:
        cells.insert(0, row["hardware"])
        cells.insert(6, f"{row['cost_per_demand_gpu_hour_eur']:.2f}")
    return cells


def _intro(result: dict[str, Any]) -> str:
    d, c = result["demand"], result["costs"]
    options = result["hardware"]
    machines = "; ".join(
        f"{h['name']} at €{h['price_eur']:,.0f}, {h['max_kw']} kW, {h['lifetime_years']:g} years"
        + (f", {h['speed']:g}x an H100" if len(options) > 1 or h["speed"] != 1 else "")
        for h in options
    )
    compared = (
        " €/H100-h: euros per GPU-hour of the demand (counted on H100s) served, on any hardware."
        if len(options) > 1
        else ""
    )
    users = (
        f" ({d['users']:,} users, each {d['gpu_hours_per_user_per_year']:,.0f} GPU-hours a year: "
        f"the mean of the trace's {d['trace_tenants']} tenants)"
        if d.get("users")
        else ""
    )
    return (
        f"Demand {d['gpu_hours_per_year']:,.0f} GPU-hours a year{users}, shaped like {d['trace']} "
        f"({d['jobs']} jobs, seed {d['seed']}); {machines}; electricity "
        f"€{c['electricity_eur_per_kwh']}/kWh, PUE {c['pue']}, water {c['wue_onsite_l_per_kwh']} "
        f"L/kWh on site and {c['water_offsite_l_per_kwh']} off site, grid "
        f"{c['carbon_g_per_kwh']:.0f} g CO2e/kWh.{compared}"
    )


OVERLOADED = (
    "* a load above 1: the size cannot run the demand, whose queue grows all year; its waits are "
    "the replay's, over the trace's span only, and its costs count the GPU-hours it can run."
)


def _header(column: str) -> str:
    """Words in capitals as in every table of the CLI; units as they are written (MWh, m³, t)."""
    return " ".join(w.upper() if w.isalnum() and w.islower() and len(w) > 1 else w
                    for w in column.split())  # fmt: skip


def _print(result: dict[str, Any]) -> None:
    console.print(_intro(result), highlight=False)
    compared = len(result["hardware"]) > 1
    table = _table(*map(_header, _columns(compared)))
    for row in result["sizes"]:
        table.add_row(*_cells(row, compared))
    console.print(table)  # into a file or a pipe too, whole (output._Console)
    if not all(row["keeps_up"] for row in result["sizes"]):
        console.print(OVERLOADED, highlight=False)


def _print_markdown(result: dict[str, Any]) -> None:
    print(_intro(result) + "\n")
    compared = len(result["hardware"]) > 1
    columns = _columns(compared)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in result["sizes"]:
        print("| " + " | ".join(_cells(row, compared)) + " |")
    if not all(row["keeps_up"] for row in result["sizes"]):
        print("\n" + OVERLOADED)
