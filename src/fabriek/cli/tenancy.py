"""`fabriek org|project|user|token ...`: tenants, their members, users and personal tokens
(pools and allocations: cli/pools.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fabriek.cli.output import (
    JsonOpt,
    age,
    console,
    err_console,
    expiry_text,
    fail,
    handled,
    print_json,
    print_rows,
    shown,
)
from fabriek.cli.output import client as _client
from fabriek.core.identity import Network
from fabriek.core.tenancy import OrgKind, OrgRole, ProjectRole

org_app = typer.Typer(help="Organisations and their members.", no_args_is_help=True)
project_app = typer.Typer(help="Projects and their members.", no_args_is_help=True)
user_app = typer.Typer(help="Users and platform roles (operators).", no_args_is_help=True)
token_app = typer.Typer(help="Your personal API tokens.", no_args_is_help=True)


def _table(*columns: str) -> Table:
    return Table(*columns, box=None, header_style="bold")


def _members_table(members) -> Table:  # type: ignore[no-untyped-def]
    table = _table("USER", "ROLE")
    for m in members:
        table.add_row(shown(m.user), m.role)
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
        console.print(f"created organisation {shown(org.name)} (unverified)", highlight=False)


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
            shown(o.name),
            shown(o.display_name),
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
        console.print(f"[bold]{label:>10}[/]  {shown(value)}", highlight=False)
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
        f"updated {shown(org.name)}; verified: {'yes' if org.verified else 'no'}", highlight=False
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
        f"{shown(org.name)} is {'verified' if org.verified else 'not verified'}", highlight=False
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
    console.print(f"{shown(m.user)} is {m.role} of {shown(name)}", highlight=False)


@org_app.command("remove-member")
def org_remove_member(name: str, user: str) -> None:
    """Remove a user from the organisation and all its projects."""
    with handled():
        _client().remove_organisation_member(name, user)
    console.print(f"removed {shown(user)} from {shown(name)}", highlight=False)


# --- projects -----------------------------------------------------------------------------------
@project_app.command("create")
def project_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="The organisation it belongs to.")],
) -> None:
    """Owners and managers of the organisation; you manage the new project."""
    with handled():
        p = _client().create_project(name, organisation=org)
    console.print(f"created project {shown(p.name)} in {shown(p.organisation)}", highlight=False)


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
            shown(p.name),
            shown(p.organisation),
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
        f"[bold]{shown(p.name)}[/] in {shown(p.organisation)}; your role: "
        f"{p.my_role.value if p.my_role else '-'}",
        highlight=False,
    )
    console.print(f"network: {_network_lock(p.network_limit)}", highlight=False)
    console.print(_members_table(members))


def _network_lock(limit: Network | None) -> str:
    if limit is None:
        return "as its partitions allow (not locked)"
    return f"locked to {limit.value} at most, by an operator"


@project_app.command("set")
def project_set(
    name: str,
    network_limit: Annotated[
        Network | None,
        typer.Option(
            help="Operators: the most network its jobs may have (none, loopback; host lifts "
            "the lock). Waiting jobs that asked for more fail when they would start."
        ),
    ] = None,
) -> None:
    """Change a project's settings."""
    if network_limit is None:
        fail("nothing to change: give --network-limit", 2)
    with handled():
        p = _client().update_project(name, network_limit=network_limit.value)
    console.print(
        f"project {shown(p.name)}: network {_network_lock(p.network_limit)}", highlight=False
    )


@project_app.command("add-member")
def project_add_member(
    name: str,
    user: str,
    role: Annotated[ProjectRole, typer.Option(help="manager or member.")] = ProjectRole.MEMBER,
) -> None:
    """Add a member of the project's organisation to the project, or change their role."""
    with handled():
        m = _client().set_project_member(name, user, role.value)
    console.print(f"{shown(m.user)} is {m.role} of project {shown(name)}", highlight=False)


@project_app.command("remove-member")
def project_remove_member(name: str, user: str) -> None:
    with handled():
        _client().remove_project_member(name, user)
    console.print(f"removed {shown(user)} from project {shown(name)}", highlight=False)


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
    err_console.print(f"created user {shown(u.name)}; their token (shown once):", highlight=False)
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
            shown(u.name),
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
        f"{shown(u.name)}: operator {'yes' if u.is_operator else 'no'}, "
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
        f"token {t.id} ({shown(t.name)}) expires {t.expires_at:%Y-%m-%d}; shown once:",
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
            shown(t.name),
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
    """Revoke a token: refused from now on, by every API process."""
    with handled():
        t = _client().revoke_token(token_id)
    console.print(f"revoked token {t.id} ({shown(t.name)})", highlight=False)
