"""`fabriek simulate`: replay a job trace through the admission engine and baselines, locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fabriek.cli.output import console, err_console, fail, handled, interruptible
from fabriek.cli.progress import progress
from fabriek.cli.tenancy import _table
from fabriek.core.errors import InvalidRequest
from fabriek.core.units import parse_duration
from fabriek.sim.workload import DEFAULT_POOLS_TEXT, parse_pools

# Options `fabriek simulate` and `fabriek plan` share.
TraceArgument = typer.Argument(
    help="The job trace: a CSV file (gzip'd or not), or a trace shipped with fabriek: "
    "itp/cluster01 .. itp/cluster07 (Microsoft ITP, 2021) or philly (Microsoft Philly, 2017).",
    metavar="TRACE",
    show_default=False,
)
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="itp (job_id, submission_time, duration, num_gpu), philly (timestamp, duration, "
        "num_gpus, gpu_time, cluster) or csv (with --columns) [default: found from the "
        "file's header].",
    ),
]
ColumnsOption = Annotated[
    str | None,
    typer.Option(help="For --format csv: submit=COL,duration=COL,gpus=COL[,tenant=COL][,id=COL]."),
]
PoolsOption = Annotated[str, typer.Option(help="Pools: name=guarantee:projects, comma-separated.")]


def simulate(
    trace: Annotated[str, TraceArgument],
    trace_format: FormatOption = None,
    columns: ColumnsOption = None,
    policy: Annotated[
        str | None, typer.Option(help="The policy to replay [default: fabriek].")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Several policies side by side, e.g. fifo,easy,fabriek (also sjf: shortest "
            "first with perfect knowledge, fairshare, las: Tiresias-style least attained "
            "service)."
        ),
    ] = None,
    load: Annotated[
        float,
        typer.Option(help="Scale the arrivals so that the trace offers this load (0 keeps them)."),
    ] = 0.8,
    gpus: Annotated[
        int | None,
        typer.Option(help="The machine's GPUs [default: sized so that the trace offers --load]."),
    ] = None,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node.")] = 8,
    pools: PoolsOption = DEFAULT_POOLS_TEXT,
    seed: Annotated[int, typer.Option(help="Seed of the tenant and time-limit rules.")] = 1,
    exact_limits: Annotated[
        bool, typer.Option(help="Time limits equal to the true durations (perfect knowledge).")
    ] = False,
    max_jobs: Annotated[
        int | None, typer.Option(help="Only the trace's first N jobs, by submission time.")
    ] = None,
    carbon: Annotated[
        Path | None,
        typer.Option(
            help="Hourly grid carbon intensity (Electricity Maps CSV) for energy, water and "
            "carbon [default: the Dutch 2021-2023 series shipped with fabriek]."
        ),
    ] = None,
    no_carbon: Annotated[bool, typer.Option("--no-carbon", help="No footprint.")] = False,
    flexible: Annotated[
        float,
        typer.Option(
            help="Share of jobs that may wait for greener hours (0-1); fabriek's engine plans "
            "them on the carbon series as a perfect forecast, and the saving is reported."
        ),
    ] = 0.0,
    slack: Annotated[
        str, typer.Option(help="How much later than at once a flexible job may end, e.g. 12h.")
    ] = "12h",
    starving_after: Annotated[
        str,
        typer.Option(
            help="fabriek's starvation guard: a job waiting this long goes first in its pool "
            "(as the live engine, 14d); 'never' turns it off."
        ),
    ] = "14d",
    checkpoints: Annotated[
        bool,
        typer.Option(
            help="fabriek's preempted jobs resume where they stopped, from a checkpoint saved in "
            "the grace period (LAS's always do); by default their run is lost."
        ),
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every metric to this file.")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write a self-contained HTML report with plots to this file."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Policies replayed at once, each in its own process [default: one per core]; "
            "1 for the cleanest JOBS/s."
        ),
    ] = None,
) -> None:
    """Replay a trace through fabriek's admission engine (and baselines) on a virtual clock."""
    from fabriek.data import default_grid
    from fabriek.sim.run import Study, run_study
    from fabriek.sim.traces import resolve

    with handled(), interruptible():
        mapping = parse_columns(columns) if columns is not None else None
        if compare is not None and policy is not None:
            raise InvalidRequest("give --policy (one) or --compare (several), not both")
        if policy is not None and ("," in policy or not policy.strip()):
            raise InvalidRequest(f"--policy names one, got {policy!r}; --compare for several")
        chosen = compare if compare is not None else (policy or "fabriek")
        names = [p.strip() for p in chosen.split(",") if p.strip()]
        if not names:
            raise InvalidRequest("--compare names no policy; e.g. --compare fifo,easy,fabriek")
        carbon_series = None if no_carbon else (carbon or default_grid())
        trace_path, kind = resolve(trace, trace_format or ("csv" if mapping else None))
        said_format(trace, trace_format, mapping, kind)
        study = Study(
            trace=trace_path,
            kind=kind,
            columns=mapping,
            policies=names,
            load=load or None,
            gpus=gpus,
            gpus_per_node=gpus_per_node,
            pools=parse_pools(pools),
            seed=seed,
            exact_limits=exact_limits,
            max_jobs=max_jobs,
            carbon_series=carbon_series,
            flexible=flexible,
            slack_s=parse_duration(slack),
            starving_after_s=None if starving_after == "never" else parse_duration(starving_after),
            checkpoints=checkpoints,
        )
        with progress("jobs") as update:

            def replayed(name: str, done: int, total: int) -> None:
                if done % 200 == 0 or done == total:
                    update(name, done, total)

            result = run_study(study, replayed, workers=workers)
    from fabriek.sim.report import html_report

    for path, text in ((json_path, lambda: json.dumps(result, indent=1)),
                       (report, lambda: html_report(result))):  # fmt: skip
        if path is not None:
            try:
                path.write_text(text())
            except OSError as exc:
                fail(f"cannot write {path}: {exc.strerror}", 2)
    _print(result)


def said_format(trace: str, given: str | None, columns: object, kind: str) -> None:
    """One line on stderr when a file's format was found from its header, not given."""
    from fabriek import data

    if given is None and columns is None and data.shipped_unless_file(trace, "trace") is None:
        article = {"itp": "an ITP", "philly": "a Philly"}.get(kind, f"a {kind}")
        err_console.print(f"{trace}: read as {article} trace, from its header (--format to choose)")


def parse_columns(text: str) -> dict[str, str]:
    """`--columns submit=COL,duration=COL,...`: role -> the CSV's column."""
    mapping = {}
    for part in text.split(","):
        role, sep, column = part.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise InvalidRequest(f"cannot read --columns part {part!r}; use e.g. gpus=num_gpu")
        if role.strip() in mapping:
            raise InvalidRequest(f"--columns names {role.strip()} twice")
        mapping[role.strip()] = column.strip()
    return mapping


def _print(result: dict[str, object]) -> None:
    w, m = result["workload"], result["machine"]
    dropped = w["dropped_larger_than_machine"]  # type: ignore[index]
    console.print(
        f"{w['jobs']} jobs on {m['gpus']} GPUs ({m['nodes']} node{'s' * (m['nodes'] != 1)}), "  # type: ignore[index]
        f"offered load {w['offered_load']:.2f}, seed {w['seed']}, time limits "  # type: ignore[index]
        f"{w['time_limits']}"  # type: ignore[index]
        + (
            f"; {dropped} of the trace's jobs left out: no GPUs, no duration, or larger than "
            "the machine"
            if dropped
            else ""
        ),
        highlight=False,
    )
    policies = result["policies"]  # type: ignore[index]
    table = _table("POLICY", "JCT h", "P50 h", "P99 h", "WAIT mean min", "1-GPU WAIT P99 min", "UTIL",
                   "UTIL ARRIVING", "PREEMPTED", "JOBS/s")  # fmt: skip
    for p in policies:  # type: ignore[attr-defined]
        table.add_row(
            p["policy"],
            f"{p['jct_s']['mean'] / 3600:.2f}",
            f"{p['jct_s']['median'] / 3600:.2f}",
            f"{p['jct_s']['p99'] / 3600:.1f}",
            f"{p['wait_s']['mean'] / 60:.0f}",
            f"{p['small_jobs_wait_s']['p99'] / 60:.0f}",
            f"{p['utilisation']:.1%}",
            f"{p['utilisation_while_arriving']:.1%}",
            str(p["preemptions"]),
            f"{p['jobs_per_s']:,.0f}",
        )
    console.print(table)
    if all("green" in p for p in policies):  # type: ignore[attr-defined]
        green = _table("POLICY", "IT MWh", "FACILITY MWh", "WATER m³", "t CO2e", "g/kWh")
        for p in policies:  # type: ignore[attr-defined]
            g = p["green"]
            green.add_row(p["policy"], f"{g['it_mwh']:,.1f}", f"{g['facility_mwh']:,.1f}",
                          f"{g['water_m3']:,.0f}", f"{g['t_co2e']:,.1f}",
                          f"{g['mean_g_per_kwh']:.0f}")  # fmt: skip
        console.print(green)
        for p in policies:  # type: ignore[attr-defined]
            g, f = p["green"], p["flexible"]
            if "saved_t_co2e" in g:
                # A negative saving is said as what it is: deferring one job moves others, and
                # the whole replay can emit more although the deferred jobs' own footprint fell
                saved, share = g["saved_t_co2e"], g["saved_share"]
                verb = "saved" if saved >= 0 else "added"
                console.print(
                    f"{p['policy']}: deferring {f['deferred']} of {f['jobs']} flexible jobs {verb} "
                    f"{abs(saved):,.2f} t CO2e in all ({abs(share):.1%} of "
                    f"{g['without_deferral_t_co2e']:,.1f} t without deferral); the flexible jobs' "
                    f"own footprint {'fell' if g['flexible_saved_share'] >= 0 else 'rose'} "
                    f"{abs(g['flexible_saved_share']):.1%}; the deferred "
                    f"ran at {g['deferred_g_per_kwh_as_run']:.0f} g/kWh, "
                    f"{g['deferred_g_per_kwh_at_submit']:.0f} had they started at once; "
                    f"{f['deadlines_missed']} deadlines missed "
                    f"({g['deadlines_missed_without_deferral']} without deferral)",
                    highlight=False,
                )
    console.print("share of its waiting time each pool ran at least its guarantee:")
    shares = _table("POOL", "GUARANTEE", *(p["policy"].upper() for p in policies))  # type: ignore[attr-defined]
    for name, first in policies[0]["pools"].items():  # type: ignore[index]
        met = [p["pools"][name]["guarantee_met_while_waiting"] for p in policies]  # type: ignore[attr-defined]
        shares.add_row(
            name, f"{first['guarantee']:.0%}", *("-" if m is None else f"{m:.0%}" for m in met)
        )
    console.print(shares)
