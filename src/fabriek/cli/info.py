"""`fabriek whoami`, `fabriek partitions` and `fabriek --version`: who you are here, and what the
factory has and how busy it is now."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fabriek.cli.output import JsonOpt, console, expiry_text, handled, print_json, print_rows, shown
from fabriek.cli.output import client as _client
from fabriek.core.units import format_bytes


def _print_version(value: bool) -> None:
    if value:
        from fabriek import __version__

        print(f"fabriek {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print fabriek's version and exit.",
        ),
    ] = False,
) -> None:
    """fabriek: run and follow jobs on an AI Factory."""


def whoami(json_out: JsonOpt = False) -> None:
    """Who you are on this server: platform roles, organisations and projects with your role,
    and when your token expires."""
    with handled():
        client = _client()
        me = client.whoami()
    if json_out:
        print_json({"url": client.url, **me.model_dump(mode="json")})
        return
    roles = [r for r, on in (("operator", me.is_operator), ("reviewer", me.is_reviewer)) if on]
    token = me.token
    print_rows(
        ("user", me.name),
        ("server", client.url),
        ("roles", ", ".join(roles) or "none (a plain user)"),
        (
            "organisations",
            ", ".join(f"{m.name} ({m.role})" for m in me.organisations) or "none",
        ),
        (
            "projects",
            ", ".join(f"{m.name} ({m.role}, {m.organisation})" for m in me.projects) or "none",
        ),
        (
            "token",
            "-"
            if token is None
            else f"{token.id} ({token.name}), expires {expiry_text(token.expires_at)}",
        ),
    )


def partitions(json_out: JsonOpt = False) -> None:
    """What the factory has and what is busy now, as `sinfo` shows a Slurm cluster: each
    partition's nodes (idle, mixed, allocated), CPUs, memory and GPUs in use, and how many jobs
    run and wait in each pool (counts only)."""
    with handled():
        factory = _client().partitions()
    if json_out:
        print_json(factory)
        return
    table = Table(
        "PARTITION", "KIND", "NODES", "IDLE/MIXED/ALLOC", "CPUS BUSY", "MEMORY BUSY", "GPUS BUSY",
        "GPU TYPE", "NETWORK", "RUNNING JOBS",
        box=None, header_style="bold",
    )  # fmt: skip
    for p in factory.partitions:
        r, n = p.per_node, p.nodes
        table.add_row(
            shown(p.name),
            p.kind,
            str(n),
            f"{p.nodes_idle}/{p.nodes_mixed}/{p.nodes_allocated}",
            f"{p.cpus_busy}/{r.cpus * n}",
            f"{format_bytes(p.memory_busy_bytes)}/{format_bytes(r.memory_bytes * n)}",
            f"{p.gpus_busy}/{r.gpus * n}",
            shown(p.gpu_type or "-"),
            p.network.value
            + (f" (at most {p.network_limit.value})" if p.network_limit != p.network else ""),
            str(p.running_jobs),
        )
    console.print(table)
    pools = Table(
        "POOL", "RUNNING JOBS", "GPUS IN USE", "WAITING JOBS", "GPUS ASKED",
        box=None, header_style="bold",
    )  # fmt: skip
    for q in factory.pools:
        pools.add_row(
            shown(q.pool),
            str(q.running_jobs),
            str(q.running_gpus),
            str(q.pending_jobs),
            str(q.pending_gpus),
        )
    console.print(pools)
