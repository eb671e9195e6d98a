"""`fabriek pool|allocation ...` and `fabriek org pools`: the factory's shares and projects'
budgets of GPU-hours in them."""

from __future__ import annotations

from typing import Annotated

import typer

from fabriek.cli.output import (
    JsonOpt,
    console,
    handled,
    print_json,
    print_rows,
    shown,
    utc_iso,
)
from fabriek.cli.output import client as _client
from fabriek.cli.tenancy import _table, org_app
from fabriek.core.tenancy import OrgKind

allocation_app = typer.Typer(
    help="Allocations: projects' budgets of GPU-hours in pools.", no_args_is_help=True
)
pool_app = typer.Typer(
    help="Pools: shares of the factory (operators change them).", no_args_is_help=True
)


# --- pools --------------------------------------------------------------------------------------
def _eligibility_text(e) -> str:  # type: ignore[no-untyped-def]
    parts = []
    if e.verified:
        parts.append("verified")
    if e.countries:
        parts.append("in " + "/".join(e.countries))
    if e.regions:
        parts.append("region " + "/".join(e.regions))
    if e.kinds:
        parts.append("/".join(k.value for k in e.kinds))
    return ", ".join(parts) or "anyone"


@pool_app.command("list")
def pool_list(json_out: JsonOpt = False) -> None:
    """All pools: guarantee, limits, who is eligible."""
    with handled():
        found = _client().pools()
    if json_out:
        print_json(found)
        return
    table = _table("NAME", "GUARANTEE", "BORROW LIMIT", "LENDS", "ELIGIBLE", "DISPLAY NAME")
    for p in found:
        table.add_row(
            shown(p.name),
            f"{p.guarantee:.0%}",
            "none" if p.borrow_limit is None else f"{p.borrow_limit:.0%}",
            f"{p.lend_limit:.0%}",
            shown(_eligibility_text(p.eligibility)),
            shown(p.display_name),
        )
    console.print(table)
    total = sum(p.guarantee for p in found)
    console.print(f"guarantees sum to {total:.0%}; the rest is shared", highlight=False)


def _eligibility_body(
    verified: bool | None,
    countries: list[str] | None,
    regions: list[str] | None,
    kinds: list[OrgKind] | None,
) -> dict[str, object] | None:
    if verified is None and not countries and not regions and not kinds:
        return None
    return {
        "verified": bool(verified),
        "countries": countries or [],
        "regions": regions or [],
        "kinds": [k.value for k in kinds or []],
    }


VerifiedOpt = Annotated[
    bool | None,
    typer.Option("--verified-only/--anyone", help="Only organisations an operator verified."),
]
CountryOpt = Annotated[
    list[str] | None, typer.Option("--country", help="Eligible country (repeatable).")
]
RegionOpt = Annotated[
    list[str] | None, typer.Option("--region", help="Eligible NUTS region prefix (repeatable).")
]
KindOpt = Annotated[
    list[OrgKind] | None, typer.Option("--kind", help="Eligible organisation kind (repeatable).")
]


@pool_app.command("create")
def pool_create(
    name: str,
    guarantee: Annotated[float, typer.Option(help="Fraction of each GPU type, e.g. 0.25.")],
    display_name: Annotated[str | None, typer.Option()] = None,
    borrow_limit: Annotated[
        float | None, typer.Option(help="Fraction it may borrow beyond its guarantee.")
    ] = None,
    lend_limit: Annotated[float, typer.Option(help="Fraction of its guarantee it lends.")] = 1.0,
    verified: VerifiedOpt = None,
    country: CountryOpt = None,
    region: RegionOpt = None,
    kind: KindOpt = None,
) -> None:
    """Operators: a new pool. All guarantees together may not exceed 100 %."""
    eligibility = _eligibility_body(verified, country, region, kind) or {}
    with handled():
        p = _client().create_pool(
            name,
            display_name=display_name or name,
            guarantee=guarantee,
            borrow_limit=borrow_limit,
            lend_limit=lend_limit,
            eligibility=eligibility,
        )
    console.print(f"created pool {shown(p.name)} ({p.guarantee:.0%})", highlight=False)


@pool_app.command("update")
def pool_update(
    name: str,
    guarantee: Annotated[float | None, typer.Option()] = None,
    display_name: Annotated[str | None, typer.Option()] = None,
    borrow_limit: Annotated[float | None, typer.Option()] = None,
    no_borrow_limit: Annotated[bool, typer.Option(help="Lift the borrow limit.")] = False,
    lend_limit: Annotated[float | None, typer.Option()] = None,
    verified: VerifiedOpt = None,
    country: CountryOpt = None,
    region: RegionOpt = None,
    kind: KindOpt = None,
) -> None:
    """Operators: change a pool. Eligibility options replace the whole rule."""
    with handled():
        p = _client().update_pool(
            name,
            guarantee=guarantee,
            display_name=display_name,
            borrow_limit=borrow_limit,
            no_borrow_limit=no_borrow_limit or None,
            lend_limit=lend_limit,
            eligibility=_eligibility_body(verified, country, region, kind),
        )
    console.print(
        f"pool {shown(p.name)}: guarantee {p.guarantee:.0%}, eligible: "
        f"{shown(_eligibility_text(p.eligibility))}",
        highlight=False,
    )


@pool_app.command("show")
def pool_show(name: str, json_out: JsonOpt = False) -> None:
    """One pool: its share of the factory, its limits and who is eligible."""
    with handled():
        p = _client().pool(name)
    if json_out:
        print_json(p)
        return
    print_rows(
        ("pool", f"{p.name} ({p.display_name})"),
        ("guarantee", f"{p.guarantee:.0%} of each GPU type"),
        (
            "borrows",
            "up to any idle capacity"
            if p.borrow_limit is None
            else f"up to {p.borrow_limit:.0%} beyond its guarantee",
        ),
        ("lends", f"{p.lend_limit:.0%} of its guarantee when idle"),
        ("eligible", _eligibility_text(p.eligibility)),
        ("created", f"{p.created_at:%Y-%m-%d}"),
    )


@org_app.command("pools")
def org_pools(name: str, json_out: JsonOpt = False) -> None:
    """Which pools the organisation may get allocations in, and why not where it may not."""
    with handled():
        found = _client().organisation_pools(name)
    if json_out:
        print_json(found)
        return
    table = _table("POOL", "ELIGIBLE", "WHY NOT")
    for p in found:
        table.add_row(shown(p.pool), "yes" if p.eligible else "no", shown(p.why_not or "-"))
    console.print(table)


# --- allocations --------------------------------------------------------------------------------
@allocation_app.command("grant")
def allocation_grant(
    project: Annotated[str, typer.Option(help="The project that gets it.")],
    pool: Annotated[str, typer.Option(help="The pool it is in.")],
    gpu_hours: Annotated[float, typer.Option(help="The budget in GPU-hours.")],
    days: Annotated[int, typer.Option(help="How long it lasts.")] = 365,
    starts: Annotated[
        str | None, typer.Option(help="When it begins, ISO 8601 [default: now].")
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="e.g. the call or decision it comes from.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Operators: give a project GPU-hours in a pool for a period."""
    with handled():
        a = _client().grant_allocation(
            project=project,
            pool=pool,
            gpu_hours=gpu_hours,
            days=days,
            starts_at=utc_iso(starts) if starts else None,
            note=note,
        )
    if json_out:
        print_json(a)
    else:
        console.print(
            f"allocation {a.id}: {a.gpu_hours:g} GPU-hours for {shown(a.project)} in pool "
            f"{shown(a.pool)}, {a.starts_at:%Y-%m-%d} to {a.ends_at:%Y-%m-%d}",
            highlight=False,
        )


@allocation_app.command("list")
def allocation_list(
    project: Annotated[str | None, typer.Option(help="Only this project's.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Allocations of the projects you see: budget, held by running or waiting jobs, charged."""
    with handled():
        found = _client().allocations(project)
    if json_out:
        print_json(found)
        return
    table = _table("ID", "PROJECT", "POOL", "GPU-HOURS", "HELD", "CHARGED", "LEFT", "UNTIL")
    for a in found:
        table.add_row(
            str(a.id),
            shown(a.project),
            shown(a.pool),
            f"{a.gpu_hours:g}",
            f"{a.held_gpu_hours:.2f}",
            f"{a.charged_gpu_hours:.2f}",
            f"{a.left_gpu_hours:.2f}",
            f"{a.ends_at:%Y-%m-%d}",
        )
    console.print(table)


@allocation_app.command("show")
def allocation_show(
    allocation_id: Annotated[int, typer.Argument(help="Allocation id (see allocation list).")],
    json_out: JsonOpt = False,
) -> None:
    """One allocation: budget, what running or waiting jobs hold, what was charged, what is left."""
    with handled():
        a = _client().allocation(allocation_id)
    if json_out:
        print_json(a)
        return
    print_rows(
        ("allocation", f"{a.id}: project {a.project} in pool {a.pool}"),
        ("budget", f"{a.gpu_hours:g} GPU-hours"),
        ("held", f"{a.held_gpu_hours:.2f} GPU-hours by jobs that have not ended"),
        ("charged", f"{a.charged_gpu_hours:.2f} GPU-hours by jobs that ended"),
        ("left", f"{a.left_gpu_hours:.2f} GPU-hours for new jobs"),
        ("period", f"{a.starts_at:%Y-%m-%d %H:%M} to {a.ends_at:%Y-%m-%d %H:%M} UTC"),
        ("granted by", a.granted_by),
        ("note", a.note or "-"),
    )
