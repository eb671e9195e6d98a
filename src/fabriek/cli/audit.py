"""`fabriek audit list`: the audit trail, for operators (docs/operators.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fabriek.cli.jobs import _moment
from fabriek.cli.output import JsonOpt, console, err_console, handled, print_json, shown
from fabriek.cli.output import client as _client

audit_app = typer.Typer(help="The audit trail (operators).", no_args_is_help=True)

DETAILS_SHOWN = 120  # characters of an event's details in the table (--json has them all)


@audit_app.command("list")
def audit_list(
    actor: Annotated[
        str | None,
        typer.Option(help="Only this actor's events: user:NAME, controller, client:ADDRESS."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            help="Only this action and those below it: job (job.submit, job.cancel, ...), "
            "access (refused accesses), auth (refused tokens)."
        ),
    ] = None,
    target_type: Annotated[
        str | None, typer.Option(help="Only events about this kind of object, e.g. job.")
    ] = None,
    target_id: Annotated[
        str | None, typer.Option(help="Only events about this object (with --target-type).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only events since then: a duration ago (2h, 1d) or a time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only events before then: a duration ago or a time.")
    ] = None,
    before: Annotated[
        int | None, typer.Option(help="Only events with a smaller id (the next page).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Audit events, newest first: who changed what, and who was refused."""
    with handled():
        page = _client().audit(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=_moment(since, "--since"),
            until=_moment(until, "--until"),
            before=before,
            limit=limit,
        )
    if json_out:
        print_json(page)
        return
    table = Table("ID", "AT (UTC)", "ACTOR", "ACTION", "TARGET", "DETAILS", box=None,
                  header_style="bold")  # fmt: skip
    for e in page.events:
        table.add_row(
            str(e.id),
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            shown(e.actor),
            shown(e.action),
            shown(f"{e.target_type} {e.target_id}"),
            shown(_details(e.details)),
        )
    console.print(table)
    if page.next_before is not None:
        err_console.print(f"older events: add --before {page.next_before}", highlight=False)


def _details(details: dict[str, Any]) -> str:
    """`key=value` pairs on one line, values as compact JSON, cut to DETAILS_SHOWN."""
    text = " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in details.items()
    )
    return text if len(text) <= DETAILS_SHOWN else text[: DETAILS_SHOWN - 1] + "…"
