"""Authentication per request: what the token cache saves, and what closing the last delay with a
database check would cost (issue 21, item 8).

A cached token costs no database read: the AuthEpoch (shared memory) voids the cache on every
API process of a server at once when roles, memberships or tokens change. Servers on other hosts
would not share that memory; they cannot exist today (a second server on one database is refused),
but if they did, each request would have to read an epoch row from the database to be as prompt.
This measures, in process (no HTTP client in the way), the same signed-in request answered

- `no_hook`: a cache hit through the dependency as it was before refusals were audited,
- `cached`: with the cache as it is (a hit: one shared-memory read, no database; the dependency
  a generator, so that it sees the 403s and 404s the request ends in),
- `epoch_row`: the cache plus one read of a one-row table per request (the database epoch),
- `uncached`: the token looked up in the database on every request (no cache at all),

on SQLite and PostgreSQL, as requests per second of one process and microseconds per request.

    python benchmarks/auth_cache.py --requests 1000 --rounds 7   # both databases (as measured)
    python benchmarks/auth_cache.py --quick --databases sqlite --json out.json

Each mode is measured `--rounds` times, the modes taking turns, and its best round is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
from _harness import DEFAULT_PG, database
from fastapi import Depends, Request
from sqlalchemy import text

from fabriek.server.app import create_app
from fabriek.server.db.migrate import upgrade
from fabriek.server.runtime import Runtime, build_runtime
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import TokenCache, bootstrap
from fabriek.settings import Settings


def _runtime(database_url: str | None, home: Path) -> tuple[Runtime, str]:
    settings = Settings(home=home, database_url=database_url, cpus=1, memory="1G", gpus="fake:0")
    runtime = build_runtime(settings)
    upgrade(runtime.engine)
    with runtime.transaction() as session:
        token = bootstrap(session, admin_name="bench", now=runtime.clock())
    assert token is not None
    with runtime.transaction() as session:
        session.execute(
            text("CREATE TABLE IF NOT EXISTS bench_epoch (id INTEGER PRIMARY KEY, v INTEGER)")
        )
        session.execute(text("DELETE FROM bench_epoch"))
        session.execute(text("INSERT INTO bench_epoch VALUES (1, 0)"))
    return runtime, token


def _read_epoch(runtime: RuntimeDep) -> int:
    with runtime.reading() as session:
        return int(session.execute(text("SELECT v FROM bench_epoch WHERE id = 1")).scalar_one())


async def _old_actor(runtime: RuntimeDep, request: Request) -> Actor:
    """The dependency as it was before refusals were audited (no `yield`), for comparison."""
    token = request.headers["Authorization"].removeprefix("Bearer ")
    actor = runtime.tokens.get(token, now=runtime.clock(), monotonic=time.monotonic())
    assert actor is not None  # warmed up by the other routes
    return actor


async def _measure(runtime: Runtime, token: str, mode: str, requests: int) -> tuple[float, float]:
    app = create_app(runtime)

    @app.get("/bench/no_hook")
    def no_hook(actor: Annotated[Actor, Depends(_old_actor)]) -> dict[str, Any]:
        return {"n": actor.name}

    @app.get("/bench/cached")
    def cached(actor: ActorDep) -> dict[str, Any]:
        return {"n": actor.name}

    @app.get("/bench/epoch_row")
    def epoch_row(actor: ActorDep, epoch: Annotated[int, Depends(_read_epoch)]) -> dict[str, Any]:
        return {"n": actor.name, "e": epoch}

    runtime.tokens = TokenCache(runtime.tokens.epoch, ttl=0.0 if mode == "uncached" else 3600.0)
    path = {"epoch_row": "/bench/epoch_row", "no_hook": "/bench/no_hook"}.get(mode, "/bench/cached")
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(200):  # warm up: pools, caches, code paths
            assert (await client.get("/bench/cached", headers=headers)).status_code == 200
            assert (await client.get(path, headers=headers)).status_code == 200
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            assert (await client.get(path, headers=headers)).status_code == 200
        return time.perf_counter() - began, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--rounds", type=int, default=3, help="Best of this many rounds.")
    parser.add_argument("--quick", action="store_true", help="200 requests, 2 rounds: a smoke run.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 200, 2
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for kind in args.databases:
        with tempfile.TemporaryDirectory() as home, database(kind, args.pg) as url:
            runtime, token = _runtime(url, Path(home))
            results[kind] = _run(runtime, token, args)
    print(f"{'database':10} {'mode':10} {'req/s':>8} {'us/req':>8} {'CPU us/req':>11}")
    for kind, modes in results.items():
        for mode, (wall, cpu) in modes.items():
            per = wall / args.requests
            print(
                f"{kind:10} {mode:10} {1 / per:8.0f} {per * 1e6:8.0f} "
                f"{cpu / args.requests * 1e6:11.0f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"requests": args.requests, "seconds": results}, indent=2))


def _run(runtime: Runtime, token: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Each mode's best (wall, CPU) seconds over the rounds; the modes take turns within each
    round, so that load from elsewhere falls on all of them alike."""
    modes = ("no_hook", "cached", "epoch_row", "uncached")
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(args.rounds):
            for mode in modes:
                wall, cpu = asyncio.run(_measure(runtime, token, mode, args.requests))
                old = best.get(mode, (float("inf"), float("inf")))
                best[mode] = (min(old[0], wall), min(old[1], cpu))
        return best
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
