"""`fabriek call|apply|application|review ...`: access calls and applications for GPU-hours."""

from __future__ import annotations

from typing import Annotated

import typer

from fabriek.cli.output import (
    JsonOpt,
    age,
    console,
    err_console,
    handled,
    print_json,
    shown,
    shown_lines,
    utc_iso,
)
from fabriek.cli.output import client as _client
from fabriek.cli.tenancy import _table
from fabriek.core.calls import CallMode

call_app = typer.Typer(help="Access calls (operators open them).", no_args_is_help=True)
application_app = typer.Typer(help="Applications to access calls.", no_args_is_help=True)


@call_app.command("create")
def call_create(
    name: str,
    title: Annotated[str, typer.Option(help="e.g. 'AI Factory Fast Lane, December 2026'.")],
    pool: Annotated[str, typer.Option(help="The pool its allocations are in.")],
    mode: Annotated[CallMode, typer.Option(help="playground, fast_lane or large_scale.")],
    opens: Annotated[str, typer.Option(help="ISO 8601, e.g. 2026-12-01T00:00Z.")],
    closes: Annotated[str, typer.Option(help="ISO 8601.")],
    total_gpu_hours: Annotated[float, typer.Option(help="What the call grants in all.")],
    max_gpu_hours: Annotated[float, typer.Option(help="At most per application.")],
    allocation_days: Annotated[int, typer.Option(help="How long granted allocations last.")] = 365,
    reviewers: Annotated[int | None, typer.Option(help="Reviews a decision needs.")] = None,
    threshold: Annotated[float, typer.Option(help="Mean score (1-5) to approve.")] = 3.0,
) -> None:
    """Operators: open an access call into a pool."""
    with handled():
        c = _client().create_call(
            name=name,
            title=title,
            pool=pool,
            mode=mode.value,
            opens_at=utc_iso(opens),
            closes_at=utc_iso(closes),
            total_gpu_hours=total_gpu_hours,
            max_gpu_hours=max_gpu_hours,
            allocation_days=allocation_days,
            reviewers=reviewers,
            threshold=threshold,
        )
    console.print(
        f"call {shown(c.name)} ({c.mode.value}) into pool {shown(c.pool)}: "
        f"{c.total_gpu_hours:g} GPU-hours, {c.opens_at:%Y-%m-%d} to {c.closes_at:%Y-%m-%d}",
        highlight=False,
    )


@call_app.command("list")
def call_list(json_out: JsonOpt = False) -> None:
    """All calls, newest first; which are open now."""
    with handled():
        found = _client().calls()
    if json_out:
        print_json(found)
        return
    table = _table("NAME", "MODE", "POOL", "OPEN", "CLOSES", "GRANTED / TOTAL", "MAX", "TITLE")
    for c in found:
        table.add_row(
            shown(c.name),
            c.mode.value,
            shown(c.pool),
            "yes" if c.open else "no",
            f"{c.closes_at:%Y-%m-%d}",
            f"{c.granted_gpu_hours:g} / {c.total_gpu_hours:g}",
            f"{c.max_gpu_hours:g}",
            shown(c.title),
        )
    console.print(table)


@call_app.command("show")
def call_show(name: str, json_out: JsonOpt = False) -> None:
    with handled():
        c = _client().call(name)
    if json_out:
        print_json(c)
        return
    for label, value in (
        ("call", f"{c.name}: {c.title}"),
        ("mode", f"{c.mode.value}, {c.reviewers} review(s), threshold {c.threshold:g}"),
        ("pool", c.pool),
        (
            "open",
            f"{c.opens_at:%Y-%m-%d %H:%M} to {c.closes_at:%Y-%m-%d %H:%M} UTC"
            f" ({'open now' if c.open else 'not open now'})",
        ),
        (
            "GPU-hours",
            f"{c.granted_gpu_hours:g} of {c.total_gpu_hours:g} granted, "
            f"at most {c.max_gpu_hours:g} each, for {c.allocation_days} days",
        ),
    ):
        console.print(f"[bold]{label:>10}[/]  {shown(value)}", highlight=False)


def apply(
    call: Annotated[str, typer.Argument(help="The call.")],
    project: Annotated[str, typer.Option(help="The project that would get the GPU-hours.")],
    gpu_hours: Annotated[float, typer.Option(help="GPU-hours asked for.")],
    title: Annotated[str, typer.Option(help="What the work is.")],
    summary: Annotated[str, typer.Option(help="Why, how, what it needs.")] = "",
    draft: Annotated[bool, typer.Option(help="Keep it as a draft; submit later.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Apply for GPU-hours for one of your projects (project managers)."""
    with handled():
        a = _client().apply(
            call=call,
            project=project,
            gpu_hours=gpu_hours,
            title=title,
            summary=summary,
            submit=not draft,
        )
    if json_out:
        print_json(a)
        return
    _say(a)


def _say(a) -> None:  # type: ignore[no-untyped-def]
    console.print(shown(_state_line(a.id, a.state.value, a.decision)), highlight=False)


def _state_line(application: int, state: str, decision: str | None) -> str:
    """The line `application 1 is approved: allocation 3 of 10 GPU-hours`. A decision's text
    often begins with the state itself ("approved; allocation 3 ...", "withdrawn"): said once."""
    line = f"application {application} is {state}"
    why = (decision or "").strip()
    if why.startswith(state):
        why = why[len(state) :].lstrip(" ;:,.")
    return f"{line}: {why}" if why else line


@application_app.command("list")
def application_list(
    call: Annotated[str | None, typer.Option(help="Only this call's.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Your projects' applications (reviewers: also every submitted one)."""
    with handled():
        found = _client().applications(call)
    if json_out:
        print_json(found)
        return
    table = _table("ID", "CALL", "PROJECT", "GPU-HOURS", "STATE", "REVIEWS", "AGE", "TITLE")
    for a in found:
        table.add_row(
            str(a.id),
            shown(a.call),
            shown(a.project),
            f"{a.gpu_hours:g}",
            a.state.value,
            str(len(a.reviews)),
            age(a.created_at),
            shown(a.title),
        )
    console.print(table)


@application_app.command("show")
def application_show(application_id: int, json_out: JsonOpt = False) -> None:
    with handled():
        a = _client().application(application_id)
    if json_out:
        print_json(a)
        return
    console.print(
        f"[bold]application {a.id}[/] to {shown(a.call)} for {shown(a.project)}: "
        f"{a.gpu_hours:g} GPU-hours, {a.state.value}",
        highlight=False,
    )
    console.print(shown(a.title), highlight=False)
    if a.decision:
        console.print(f"decision: {shown_lines(a.decision)}", highlight=False)
    for r in a.reviews:
        who = f" ({shown(r.reviewer)})" if r.reviewer else ""
        console.print(f"  score {r.score}{who}: {shown_lines(r.comment)}", highlight=False)


@application_app.command("submit")
def application_submit(application_id: int) -> None:
    """Submit a draft."""
    with handled():
        _say(_client().submit_application(application_id))


@application_app.command("withdraw")
def application_withdraw(application_id: int) -> None:
    with handled():
        _say(_client().withdraw_application(application_id))


def review(
    application_id: Annotated[int, typer.Argument(help="The application.")],
    score: Annotated[int, typer.Option(help="1 (poor) to 5 (excellent).")],
    comment: Annotated[str, typer.Option(help="What the applicants will read.")],
) -> None:
    """Reviewers: score an application. Enough reviews decide it."""
    with handled():
        a = _client().review(application_id, score=score, comment=comment)
    err_console.print("review recorded", highlight=False)
    _say(a)
