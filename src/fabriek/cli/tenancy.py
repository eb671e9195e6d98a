"""`fabriek org|project|user|token ...`: tenants, their members, users and personal tokens."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fabriek.cli.output import (
    age,
    console,
    err_console,
    expiry_text,
    handled,
    print_json,
    print_rows,
    utc_iso,
)
from fabriek.core.tenancy import OrgKind, OrgRole, ProjectRole

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

org_app = typer.Typer(help="Organisations and their members.", no_args_is_help=True)
project_app = typer.Typer(help="Projects and their members.", no_args_is_help=True)
user_app = typer.Typer(help="Users and platform roles (operators).", no_args_is_help=True)
token_app = typer.Typer(help="Your personal API tokens.", no_args_is_help=True)
allocation_app = typer.Typer(
    help="Allocations: projects' budgets of GPU-hours in pools.", no_args_is_help=True
)
pool_app = typer.Typer(
    help="Pools: shares of the factory (operators change them).", no_args_is_help=True
)


def _client():  # type: ignore[no-untyped-def]
    from fabriek.client.client import Client

    return Client()


def _table(*columns: str) -> Table:
    return Table(*columns, box=None, header_style="bold")


def _members_table(members) -> Table:  # type: ignore[no-untyped-def]
    table = _table("USER", "ROLE")
    for m in members:
        table.add_row(escape(m.user), m.role)
    return table


# --- organisations ------------------------------------------------------------------------------
@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="Short handle, e.g. rug.")],
    display_name: Annotated[str, typer.Option(help="Full name, e.g. 'University of Groningen'.")],
    kind: Annotated[OrgKind, typer.Option(help="What kind of organisation.")],
    country: Annotated[str | None, typer.Option(help="ISO 3166-1 code, e.g. NL.")] = None,
    region: Annotated[str | None, typer.Option(help="NUTS code, e.g. NL11 (Groningen).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register an organisation; you become its owner. An operator verifies it."""
    with handled():
        org = _client().create_organisation(
            name, display_name=display_name, kind=kind.value, country=country, region=region
        )
    if json_out:
        print_json(org)
    else:
        console.print(f"created organisation {escape(org.name)} (unverified)", highlight=False)


@org_app.command("list")
def org_list(json_out: JsonOpt = False) -> None:
    """The organisations you belong to (operators: all)."""
    with handled():
        found = _client().organisations()
    if json_out:
        print_json(found)
        return
    table = _table("NAME", "DISPLAY NAME", "KIND", "REGION", "VERIFIED", "YOUR ROLE")
    for o in found:
        table.add_row(
            escape(o.name),
            escape(o.display_name),
            o.kind.value,
            o.region or o.country or "-",
            "yes" if o.verified else "no",
            o.my_role.value if o.my_role else "-",
        )
    console.print(table)


@org_app.command("show")
def org_show(name: str, json_out: JsonOpt = False) -> None:
    """One organisation and its members."""
    with handled():
        client = _client()
        org, members = client.organisation(name), client.organisation_members(name)
    if json_out:
        print_json(
            {
                "organisation": org.model_dump(mode="json"),
                "members": [m.model_dump() for m in members],
            }
        )
        return
    verified = f"yes, by {org.verified_by} {age(org.verified_at)} ago" if org.verified else "no"
    for label, value in (
        ("name", f"{org.name} ({org.display_name})"),
        ("kind", org.kind.value),
        ("country", org.country or "-"),
        ("region", org.region or "-"),
        ("verified", verified),
        ("your role", org.my_role.value if org.my_role else "-"),
    ):
        console.print(f"[bold]{label:>10}[/]  {escape(value)}", highlight=False)
    console.print(_members_table(members))


@org_app.command("update")
def org_update(
    name: str,
    display_name: Annotated[str | None, typer.Option()] = None,
    kind: Annotated[OrgKind | None, typer.Option()] = None,
    country: Annotated[str | None, typer.Option()] = None,
    region: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Owners and operators. A new country or region must be verified again."""
    with handled():
        org = _client().update_organisation(
            name,
            display_name=display_name,
            kind=kind.value if kind else None,
            country=country,
            region=region,
        )
    console.print(
        f"updated {escape(org.name)}; verified: {'yes' if org.verified else 'no'}", highlight=False
    )


@org_app.command("verify")
def org_verify(
    name: str,
    withdraw: Annotated[bool, typer.Option(help="Withdraw the verification.")] = False,
) -> None:
    """Operators: confirm an organisation's identity and region (regional pools rely on it)."""
    with handled():
        org = _client().verify_organisation(name, verified=not withdraw)
    console.print(
        f"{escape(org.name)} is {'verified' if org.verified else 'not verified'}", highlight=False
    )


@org_app.command("add-member")
def org_add_member(
    name: str,
    user: str,
    role: Annotated[OrgRole, typer.Option(help="owner, manager or member.")] = OrgRole.MEMBER,
) -> None:
    """Add a user to the organisation, or change their role."""
    with handled():
        m = _client().set_organisation_member(name, user, role.value)
    console.print(f"{escape(m.user)} is {m.role} of {escape(name)}", highlight=False)


@org_app.command("remove-member")
def org_remove_member(name: str, user: str) -> None:
    """Remove a user from the organisation and all its projects."""
    with handled():
        _client().remove_organisation_member(name, user)
    console.print(f"removed {escape(user)} from {escape(name)}", highlight=False)


# --- projects -----------------------------------------------------------------------------------
@project_app.command("create")
def project_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="The organisation it belongs to.")],
) -> None:
    """Owners and managers of the organisation; you manage the new project."""
    with handled():
        p = _client().create_project(name, organisation=org)
    console.print(f"created project {escape(p.name)} in {escape(p.organisation)}", highlight=False)


@project_app.command("list")
def project_list(json_out: JsonOpt = False) -> None:
    """Your projects, and those of organisations you own or manage."""
    with handled():
        found = _client().projects()
    if json_out:
        print_json(found)
        return
    table = _table("NAME", "ORGANISATION", "YOUR ROLE", "AGE")
    for p in found:
        table.add_row(
            escape(p.name),
            escape(p.organisation),
            p.my_role.value if p.my_role else "-",
            age(p.created_at),
        )
    console.print(table)


@project_app.command("show")
def project_show(name: str, json_out: JsonOpt = False) -> None:
    """One project and its members."""
    with handled():
        client = _client()
        p, members = client.project(name), client.project_members(name)
    if json_out:
        print_json(
            {"project": p.model_dump(mode="json"), "members": [m.model_dump() for m in members]}
        )
        return
    console.print(
        f"[bold]{escape(p.name)}[/] in {escape(p.organisation)}; your role: "
        f"{p.my_role.value if p.my_role else '-'}",
        highlight=False,
    )
    console.print(_members_table(members))


@project_app.command("add-member")
def project_add_member(
    name: str,
    user: str,
    role: Annotated[ProjectRole, typer.Option(help="manager or member.")] = ProjectRole.MEMBER,
) -> None:
    """Add a member of the project's organisation to the project, or change their role."""
    with handled():
        m = _client().set_project_member(name, user, role.value)
    console.print(f"{escape(m.user)} is {m.role} of project {escape(name)}", highlight=False)


@project_app.command("remove-member")
def project_remove_member(name: str, user: str) -> None:
    with handled():
        _client().remove_project_member(name, user)
    console.print(f"removed {escape(user)} from project {escape(name)}", highlight=False)


# --- users --------------------------------------------------------------------------------------
@user_app.command("create")
def user_create(
    name: str,
    operator: Annotated[bool, typer.Option(help="Give the operator role.")] = False,
    reviewer: Annotated[bool, typer.Option(help="Give the reviewer role.")] = False,
    token_days: Annotated[int, typer.Option(help="Lifetime of the first token.")] = 90,
    json_out: JsonOpt = False,
) -> None:
    """Operators: create a user and print their first token (shown once: hand it over)."""
    with handled():
        u = _client().create_user(name, operator=operator, reviewer=reviewer, token_days=token_days)
    if json_out:
        print_json(u)
        return
    err_console.print(f"created user {escape(u.name)}; their token (shown once):", highlight=False)
    print(u.token)


@user_app.command("list")
def user_list(json_out: JsonOpt = False) -> None:
    """Operators: all users."""
    with handled():
        found = _client().users()
    if json_out:
        print_json(found)
        return
    table = _table("NAME", "OPERATOR", "REVIEWER", "AGE")
    for u in found:
        table.add_row(
            escape(u.name),
            "yes" if u.is_operator else "-",
            "yes" if u.is_reviewer else "-",
            age(u.created_at),
        )
    console.print(table)


@user_app.command("show")
def user_show(
    name: Annotated[str, typer.Argument(help="Yourself; operators: anyone.")],
    json_out: JsonOpt = False,
) -> None:
    """One user and their platform roles (see also `fabriek whoami`)."""
    with handled():
        u = _client().user(name)
    if json_out:
        print_json(u)
        return
    print_rows(
        ("user", u.name),
        ("operator", "yes" if u.is_operator else "no"),
        ("reviewer", "yes" if u.is_reviewer else "no"),
        ("created", f"{u.created_at:%Y-%m-%d %H:%M} UTC"),
    )


@user_app.command("set-roles")
def user_set_roles(
    name: str,
    operator: Annotated[bool | None, typer.Option("--operator/--no-operator")] = None,
    reviewer: Annotated[bool | None, typer.Option("--reviewer/--no-reviewer")] = None,
) -> None:
    """Operators: grant or withdraw the platform roles."""
    with handled():
        u = _client().set_user_roles(name, operator=operator, reviewer=reviewer)
    console.print(
        f"{escape(u.name)}: operator {'yes' if u.is_operator else 'no'}, "
        f"reviewer {'yes' if u.is_reviewer else 'no'}",
        highlight=False,
    )


# --- tokens -------------------------------------------------------------------------------------
@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What it is for, e.g. 'laptop' or 'ci'.")],
    days: Annotated[int, typer.Option(help="Lifetime in days (1-366).")] = 90,
    user: Annotated[
        str | None,
        typer.Option(help="Operators: for this user, e.g. one whose tokens all expired."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A new personal token, printed once."""
    with handled():
        t = _client().create_token(name, days=days, user=user)
    if json_out:
        print_json(t)
        return
    err_console.print(
        f"token {t.id} ({escape(t.name)}) expires {t.expires_at:%Y-%m-%d}; shown once:",
        highlight=False,
    )
    print(t.token)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Operators: someone else's.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Your tokens (never their secrets)."""
    with handled():
        found = _client().tokens(user)
    if json_out:
        print_json(found)
        return
    table = _table("ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "REVOKED")
    for t in found:
        table.add_row(
            str(t.id),
            escape(t.name),
            t.prefix + "...",
            f"{t.created_at:%Y-%m-%d}",
            f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
        )
    console.print(table)


@token_app.command("show")
def token_show(
    token_id: Annotated[int, typer.Argument(help="Token id (see token list).")],
    json_out: JsonOpt = False,
) -> None:
    """One of your tokens (operators: anyone's): when it expires; never its secret."""
    with handled():
        t = _client().token(token_id)
    if json_out:
        print_json(t)
        return
    print_rows(
        ("token", f"{t.id} ({t.name})"),
        ("user", t.user),
        ("prefix", t.prefix + "..."),
        ("created", f"{t.created_at:%Y-%m-%d %H:%M} UTC"),
        ("expires", expiry_text(t.expires_at)),
        ("revoked", f"{t.revoked_at:%Y-%m-%d %H:%M} UTC" if t.revoked_at else "no"),
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see token list).")],
) -> None:
    """Revoke a token: refused from now on (within 5 s on every API process)."""
    with handled():
        t = _client().revoke_token(token_id)
    console.print(f"revoked token {t.id} ({escape(t.name)})", highlight=False)


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
            escape(p.name),
            f"{p.guarantee:.0%}",
            "none" if p.borrow_limit is None else f"{p.borrow_limit:.0%}",
            f"{p.lend_limit:.0%}",
            escape(_eligibility_text(p.eligibility)),
            escape(p.display_name),
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
    console.print(f"created pool {escape(p.name)} ({p.guarantee:.0%})", highlight=False)


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
        f"pool {escape(p.name)}: guarantee {p.guarantee:.0%}, eligible: "
        f"{escape(_eligibility_text(p.eligibility))}",
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
        table.add_row(escape(p.pool), "yes" if p.eligible else "no", escape(p.why_not or "-"))
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
            f"allocation {a.id}: {a.gpu_hours:g} GPU-hours for {escape(a.project)} in pool "
            f"{escape(a.pool)}, {a.starts_at:%Y-%m-%d} to {a.ends_at:%Y-%m-%d}",
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
            escape(a.project),
            escape(a.pool),
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
