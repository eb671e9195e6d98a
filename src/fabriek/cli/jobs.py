"""The job commands of `fabriek`: submit, jobs, status, logs, cancel, download (registered in
main.py). Built on the SDK; what a job's workflow looks like is in docs/jobs.md."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fabriek.cli.output import (
    STATE_STYLE,
    JobOutput,
    JsonOpt,
    RawOpt,
    age,
    console,
    err_console,
    fail,
    handled,
    print_json,
    shown,
    utc_iso,
)
from fabriek.cli.output import client as _client
from fabriek.core.errors import FabriekError, InvalidRequest
from fabriek.core.identity import Network
from fabriek.core.jobs import JobState
from fabriek.core.units import format_bytes, format_duration, parse_duration

if TYPE_CHECKING:
    from fabriek.server.schemas import JobOut

CancelOpt = Annotated[
    bool,
    typer.Option(
        "--cancel-on-interrupt", help="Ctrl-C cancels the job (as srun does), not only the wait."
    ),
]
# A second Ctrl-C within this many seconds of the first cancels the job, as srun's does.
SECOND_INTERRUPT_S = 3.0


# --- jobs ---------------------------------------------------------------------------------------
def submit(
    command: Annotated[
        list[str] | None, typer.Argument(help="The command to run, after `--`.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Job name [default: the command's name].")
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            help="Project to run in [default: `fabriek config set project`, else your only "
            "project, else 'default']."
        ),
    ] = None,
    cpus: Annotated[int, typer.Option(help="CPU cores (per node).")] = 1,
    mem: Annotated[
        str | None,
        typer.Option(
            help="Memory per node, e.g. 512M, 2G [default: 2G, or a node's all where less]."
        ),
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs (per node).")] = 0,
    nodes: Annotated[
        int,
        typer.Option(
            help="Nodes: the command runs once on each, with MASTER_ADDR, WORLD_SIZE, RANK "
            "and LOCAL_RANK set for torch.distributed (a Slurm partition)."
        ),
    ] = 1,
    partition: Annotated[
        str | None,
        typer.Option(help="Run it in this partition [default: wherever there is room first]."),
    ] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", "-t", help="Time limit, e.g. 10m, 2h, 1:30:00 [default: 1h]."),
    ] = None,
    network: Annotated[
        Network | None,
        typer.Option(
            help="What it may reach: none (nothing), loopback (only itself), host (the "
            "machine's network) [default: the partition's]."
        ),
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Directory to upload; the job runs in a copy.")
    ] = Path("."),
    no_workdir: Annotated[bool, typer.Option("--no-workdir", help="Upload nothing.")] = False,
    allocation: Annotated[
        int | None,
        typer.Option(help="Charge it to this allocation of the project (see allocation list)."),
    ] = None,
    preemptible: Annotated[
        bool,
        typer.Option(
            help="May borrow idle GPUs beyond its pool's guarantee, and be stopped (SIGTERM, a "
            "grace period, requeued keeping its place) when their pool needs them back. Jobs "
            "without an allocation always are."
        ),
    ] = False,
    priority: Annotated[
        int,
        typer.Option(
            help="Orders your jobs of equal fair share, higher first (-1000 to 1000); only "
            "operators go above 0."
        ),
    ] = 0,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="It must end by then (ISO 8601; UTC unless it names a zone); until then it may "
            "wait for the hours with the lowest forecast carbon intensity. Needs --time."
        ),
    ] = None,
    flexible: Annotated[
        str | None,
        typer.Option(
            help="It may start up to this much later, e.g. 12h, for greener hours. Needs --time."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="Stream its stdout and stderr and exit with the job's exit code. Ctrl-C leaves "
            "the job running; a second Ctrl-C within a few seconds cancels it."
        ),
    ] = False,
    cancel_on_interrupt: CancelOpt = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="With --wait: the job's output byte for byte, as `fabriek logs --raw`."
        ),
    ] = False,
    parsable: Annotated[bool, typer.Option(help="Print only the job id.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job: fabriek submit --cpus 2 --mem 2G --time 10m -- python train.py"""
    if not command:
        fail("no command given; put it after `--`, e.g. fabriek submit -- python train.py", 2)
    with handled():
        from fabriek.client.packing import WorkdirWarning

        variables = _parse_env(env or [])
        client = _client()
        with warnings.catch_warnings(record=True) as left_out:
            warnings.simplefilter("always", WorkdirWarning)
            job = client.submit(
                command,
                name=name,
                project=project,
                cpus=cpus,
                memory=mem,
                gpus=gpus,
                nodes=nodes,
                partition=partition,
                time=time,
                env=variables,
                workdir=None if no_workdir else workdir,
                allocation=allocation,
                preemptible=preemptible,
                priority=priority,
                deadline=datetime.fromisoformat(utc_iso(deadline)) if deadline else None,
                flexible_s=parse_duration(flexible) if flexible else None,
                network=network.value if network else None,
            )
        for warning in left_out:
            err_console.print(f"warning: {shown(str(warning.message))}", highlight=False)
    if parsable:
        print(job.id, flush=True)
    elif json_out:
        print_json(job)
    else:
        err_console.print(f"submitted job [bold]{job.id}[/] ({shown(job.name)})", highlight=False)
    if wait:
        raise typer.Exit(_stream_until_done(client, job.id, cancel_on_interrupt, raw))


@contextmanager
def _interrupts(client, job_id: int, cancel_now: bool) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Ctrl-C while following a job ends the following, not the job: say so and how to stop
    it, and cancel it on a second Ctrl-C within SECOND_INTERRUPT_S (or at once with
    `cancel_now`). Exits with status 130 either way."""
    try:
        yield
    except KeyboardInterrupt:
        pass
    else:
        return
    if not cancel_now and _finished(client, job_id):
        raise typer.Exit(130)
    if not cancel_now:
        err_console.print(
            f"job {job_id} keeps running; `fabriek cancel {job_id}` stops it "
            f"(or Ctrl-C again within {SECOND_INTERRUPT_S:.0f} s)",
            highlight=False,
        )
        try:
            time.sleep(SECOND_INTERRUPT_S)
        except KeyboardInterrupt:
            cancel_now = True
    if cancel_now:
        try:
            job = client.cancel(job_id)
            done = job.state.value if job.state.is_final else "being cancelled"
            err_console.print(f"job {job_id} is {done}", highlight=False)
        except FabriekError as exc:  # e.g. it has just finished
            err_console.print(f"job {job_id}: {shown(exc.message)}", highlight=False)
    raise typer.Exit(130)


def _finished(client, job_id: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(client.job(job_id).state.is_final)
    except FabriekError:
        return False


def _parse_env(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"--env needs KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def _stream_until_done(client, job_id: int, cancel_on_interrupt: bool, raw: bool) -> int:  # type: ignore[no-untyped-def]
    outs = {
        "stdout": JobOutput(sys.stdout.buffer, raw=raw),
        "stderr": JobOutput(sys.stderr.buffer, raw=raw),
    }
    with handled(), _interrupts(client, job_id, cancel_on_interrupt):
        try:
            for stream, chunk in client.follow_output(job_id):
                outs[stream].write(chunk)
        finally:
            for out in outs.values():
                out.close()
        job = client.wait(job_id)
    err_console.print(
        f"job {job_id} {job.state.value}" + (f": {shown(job.reason)}" if job.reason else ""),
        highlight=False,
    )
    if job.exit_code is not None:
        return int(job.exit_code)
    return 128 + job.signal if job.signal else 1


def jobs(
    state: Annotated[
        list[JobState] | None, typer.Option(help="Only jobs in this state (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    project: Annotated[str | None, typer.Option(help="Only jobs of this project.")] = None,
    user: Annotated[str | None, typer.Option(help="Only jobs this user submitted.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Only jobs of this name; `*` matches any text.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only jobs submitted since then: a duration ago (2h, 1d) or a time."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Only jobs submitted before then: a duration ago or a time."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List your jobs, newest first."""
    with handled():
        found = _client().jobs(
            states=state,
            limit=limit,
            project=project,
            user=user,
            name=name,
            since=_moment(since, "--since"),
            until=_moment(until, "--until"),
        )
    if json_out:
        print_json(found)
        return
    table = Table(
        "ID", "NAME", "PROJECT", "STATE", "RESOURCES", "AGE", box=None, header_style="bold"
    )
    for job in found:
        r = job.resources
        table.add_row(
            str(job.id),
            shown(job.name),
            shown(job.project),
            f"[{STATE_STYLE.get(job.state.value, '')}]{job.state.value}[/]",
            f"{r.cpus} cpu {format_bytes(r.memory_bytes)} {r.gpus} gpu",
            age(job.submitted_at),
        )
    console.print(table)


def status(
    job_id: Annotated[int, typer.Argument(help="Job id.")], json_out: JsonOpt = False
) -> None:
    """Everything known about one job: state, why it waits, what it used, and its history."""
    with handled():
        job = _client().job(job_id)
    if json_out:
        print_json(job)
        return
    r, u = job.resources, job.usage
    rows = [
        ("job", f"{job.id} ({shown(job.name)})"),
        ("state", f"[{STATE_STYLE.get(job.state.value, '')}]{job.state.value}[/]"),
        ("reason", shown(job.reason or "-")),
        ("project", shown(f"{job.project}  user {job.user}")),
        (
            "allocation",
            "-"
            if job.allocation is None
            else f"{job.allocation}: holds {job.hold_gpu_hours:.2f} GPU-hours"
            + (
                f", charged {job.charged_gpu_hours:.2f}"
                if job.charged_gpu_hours is not None
                else ""
            ),
        ),
        ("command", shown(" ".join(job.argv))),
        (
            "asked",
            (f"{job.nodes} nodes with " if job.nodes > 1 else "")
            + f"{r.cpus} CPUs, {format_bytes(r.memory_bytes)}, {r.gpus} GPUs"
            + (" each" if job.nodes > 1 else "")
            + (f" in partition {shown(job.partition)}" if job.partition else "")
            + f", time limit {format_duration(job.time_limit_s)}",
        ),
        ("network", _network_line(job)),
        (
            "partition",
            shown(job.backend or "- (not admitted yet)")
            + (f", GPUs {job.gpu_ids}" if job.gpu_ids else ""),
        ),
    ]
    rows.append(("pool", _pool_line(job)))
    if job.state == JobState.PENDING:
        rows.append(("start", _start_line(job)))
    if job.exit_code is not None or job.signal is not None:
        rows.append(
            ("exit", f"code {job.exit_code}" if job.signal is None else f"signal {job.signal}")
        )
    if u.wall_s is not None:
        rows.append(
            (
                "used",
                f"wall {format_duration(u.wall_s)}, CPU {u.cpu_s:.1f}s, "
                f"peak memory {format_bytes(u.max_rss_bytes)}, GPU {u.gpu_s or 0:.1f}s",
            )
        )
    if job.deadline is not None:
        rows.append(("deadline", _green_line(job)))
    for component, used in job.energy.items():
        how = "measured" if used.measured else "estimated"
        rows.append(
            (
                f"energy {component}",
                f"{_wh(used.joules)} {how} ({shown(used.method)})",
            )
        )
    if job.footprint is not None:
        f = job.footprint
        carbon = "carbon unknown" if f.carbon_kg is None else f"{f.carbon_kg:,.3g} kg CO2e"
        rows.append(
            (
                "footprint",
                f"{_wh(f.facility_kwh * 3.6e6)} at the meter, {f.water_l:,.3g} L water, {carbon}"
                + (f" ({shown(f.note)})" if f.note else ""),
            )
        )
        if f.carbon_saved_kg is not None:
            rows.append(("saved", f"{f.carbon_saved_kg:,.3g} kg CO2e by waiting for greener hours"))
    info = Table.grid(padding=(0, 2))
    for key, value in rows:
        info.add_row(f"[bold]{key}[/]", value)
    console.print(info)
    events = Table("AT", "FROM", "TO", "BY", "WHY", box=None, header_style="bold", title="history")
    for e in job.events:
        events.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.from_state or "-",
            e.to_state,
            shown(e.actor),
            shown(e.reason or ""),
        )
    console.print(events)


def _network_line(job: JobOut) -> str:
    if job.network is None:
        return "its partition's default (decided when it starts)"
    return job.network.value + (" (asked for)" if job.state == JobState.PENDING else "")


def _green_line(job: JobOut) -> str:
    assert job.deadline is not None
    line = f"ends by {job.deadline.astimezone():%Y-%m-%d %H:%M}"
    if job.green_start_at is not None:
        line += f"; held for greener hours until {job.green_start_at.astimezone():%H:%M}"
    return line


def _wh(joules: float) -> str:
    """Energy to read: Wh below a kWh, kWh above."""
    wh = joules / 3600
    return f"{wh / 1000:,.2f} kWh" if wh >= 1000 else f"{wh:,.3g} Wh"


def _pool_line(job: JobOut) -> str:
    line = shown(job.pool or "unallocated (runs on idle GPUs)")
    notes = []
    if job.borrowed:
        notes.append("on borrowed GPUs")
    if job.preemptible:
        notes.append("preemptible")
    if job.preempting:
        notes.append("being preempted: asked to stop, then requeued")
    if job.priority:
        notes.append(f"priority {job.priority}")
    if job.preemptions:
        notes.append(f"preempted {job.preemptions} time{'s' if job.preemptions > 1 else ''}")
    return line + (f" ({', '.join(notes)})" if notes else "")


def _start_line(job: JobOut) -> str:
    """Position and estimate, added when shown: the stored reason stays stable between passes."""
    ahead = job.queue_position or 0
    waiting = f"{ahead} older job{'s' if ahead != 1 else ''} waiting in its pool"
    if job.estimated_start_at is None:
        return f"{waiting}; no estimate (it is not first in its pool's queue)"
    local = job.estimated_start_at.astimezone()
    return (
        f"{waiting}; estimated start {local:%Y-%m-%d %H:%M} "
        "(if running jobs end by their time limits)"
    )


def logs(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only what it wrote since then: a duration ago (10m, 2h) or a time."),
    ] = None,
    stderr: Annotated[
        bool, typer.Option("--stderr", help="Its error stream instead of its output.")
    ] = False,
    cancel_on_interrupt: CancelOpt = False,
    raw: RawOpt = False,
) -> None:
    """Print the job's stdout (--stderr: its stderr); jobs run before fabriek kept them apart
    have both in stdout. Control characters are shown as escapes unless --raw."""
    stream = "stderr" if stderr else "stdout"
    moment = _moment(since, "--since")
    out = JobOutput(sys.stdout.buffer, raw=raw)
    with handled():
        client = _client()
        if follow:
            with _interrupts(client, job_id, cancel_on_interrupt):
                try:
                    for chunk in client.follow_logs(job_id, stream=stream, tail=tail, since=moment):
                        out.write(chunk)
                finally:
                    out.close()
            return
        data, offset, _ = client.read_logs(job_id, stream=stream, tail=tail, since=moment)
        while data:
            out.write(data)
            data, offset, _ = client.read_logs(job_id, offset, stream=stream)
        out.close()
        if not stderr and client.read_logs(job_id, stream="stderr", limit=1)[0]:
            err_console.print(
                f"job {job_id} also wrote to stderr: `fabriek logs {job_id} --stderr`",
                highlight=False,
            )


def _moment(text: str | None, flag: str) -> datetime | None:
    """A time the user gave as a duration ago (10m, 2h, 1d) or as an ISO 8601 date or time
    (UTC unless it names a zone)."""
    if text is None:
        return None
    try:
        ago = parse_duration(text)
    except InvalidRequest:
        pass
    else:
        try:
            return datetime.now(UTC) - timedelta(seconds=ago)
        except OverflowError:  # were tracebacks (found in review)
            fail(f"{flag} {text} reaches before the year 1", 2)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(
            f"{flag} takes a duration ago (10m, 2h, 1d) or a time (2026-11-01T08:00), not {text!r}",
            2,
        )
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cancel(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job: a waiting one at once, a running one with SIGTERM, then SIGKILL after a grace."""
    with handled():
        job = _client().cancel(job_id)
    console.print(
        f"job {job.id}: {job.state.value}" + (f" ({shown(job.reason)})" if job.reason else ""),
        highlight=False,
    )


def download(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    directory: Annotated[
        Path | None, typer.Argument(help="Where to put them [default: ./job-ID].")
    ] = None,
) -> None:
    """Download the files the job wrote to $FABRIEK_OUTPUT_DIR."""
    target = directory or Path(f"job-{job_id}")
    with handled():
        client = _client()
        state = client.job(job_id).state
        names = client.download_outputs(job_id, target)
    if not state.is_final:
        err_console.print(
            f"job {job_id} is {state.value}: these outputs are partial, what it has written so far",
            highlight=False,
        )
    console.print(f"{len(names)} files in {shown(str(target))}{os.sep}", highlight=False)
    for name in names:
        console.print(f"  {shown(name)}", highlight=False)
