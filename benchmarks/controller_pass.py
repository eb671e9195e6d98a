"""Controller pass time with 10,000 pending jobs that cannot be admitted.

The controller runs one pass (observe -> forward cancels -> admit) after every submission, cancel and
job exit, and at least every second. Its cost with a long queue bounds how fast fabriek reacts and how
much CPU an idle-but-busy factory burns.

How it measures, in this process (no HTTP server), for each database (SQLite, then a throwaway
PostgreSQL database, by default):

1. Build the server's Runtime (`fabriek.server.runtime.build_runtime`) on a temporary home with
   1 CPU declared, migrate the database, bootstrap an administrator.
2. Submit one blocker job (`sleep 3600`, 1 CPU) through the jobs service and run passes until its
   process runs: a real job fills the machine, and every pass observes it like in production.
3. Insert `--jobs` pending jobs of 1 CPU. `--insert bulk` (default) writes the same job rows and
   submission events as the service, with multi-row INSERTs; `--insert service` calls
   `fabriek.server.services.jobs.submit_job` for each one (500 per transaction), like the API does.
   Either way each job carries the "queued" reason a fresh submission has.
4. Time `runtime.controller.run_pass()`:
   - the first pass, which finds that no job fits and writes the waiting reason of every job;
   - `--passes` steady-state passes of the same controller (nothing changes and nothing is
     written): median and p90, in total and per step (the PassReport's timings). A controller that
     remembers what it has seen may make these cheaper than a full look at the queue;
   - `--passes` full passes (at most 20): each the first pass of a fresh Controller on the same
     engine, built with the running one's arguments, so it knows nothing and must read the whole
     queue; the reasons are already written, so it writes nothing. This is what a pass costs after a
     job ends, or whenever the controller has no memory of the queue;
   - `--incremental` passes each right after one more submission (the common case when users
     submit into a long queue: the pass writes one reason).
5. Baseline with the same engine: `SELECT id FROM jobs WHERE state = 'pending'` fetched in full,
   as many times as the steady passes, and, for reference, the same query with every column the
   pass reads (id, cpus, memory_bytes, gpus, submitted_at, reason, ordered by id) as plain rows.
6. Kill the blocker, dispose of the engine, remove the home, drop the PostgreSQL database.

Every result carries who used the CPUs meanwhile (this benchmark and its server, PostgreSQL, other
processes, steal) and is flagged when other load took more than 0.2 cores; `--wait-quiet S` waits up
to S seconds before each measurement for other load to end (the machine may be shared).

    python benchmarks/controller_pass.py                   # 10,000 jobs on SQLite and PostgreSQL
    python benchmarks/controller_pass.py --quick           # 1,000 jobs, few passes
    python benchmarks/controller_pass.py --databases postgres --profile 20 --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import pstats
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _harness import (
    DATABASES,
    DEFAULT_PG,
    NOISY,
    CpuMonitor,
    common_options,
    database,
    describe,
    describe_cpu,
    exit_on_sigterm,
    foreign_load,
    kill_job_processes,
    machine,
    percentile,
    summary_ms,
    table,
    wait_for_quiet,
    write_json,
)
from sqlalchemy import insert, select, text

from fabriek.core.jobs import JobRequest, JobState, Resources
from fabriek.server.db.migrate import upgrade
from fabriek.server.db.models import JobEventRow, JobRow, ProjectRow
from fabriek.server.runtime import Runtime, build_runtime
from fabriek.server.services import jobs as job_service
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import authenticate, bootstrap
from fabriek.settings import Settings

MEMORY = 64 * 1024**2
STEPS = ("observe", "forward_cancels", "admit")
BASELINE_IDS = "SELECT id FROM jobs WHERE state = 'pending'"
BASELINE_COLUMNS = (
    "SELECT id, cpus, memory_bytes, gpus, submitted_at, reason FROM jobs "
    "WHERE state = 'pending' ORDER BY id"
)


def request(name: str, argv: list[str]) -> JobRequest:
    return JobRequest(
        name=name,
        project="default",
        argv=argv,
        resources=Resources(1, MEMORY, 0),
        time_limit_s=3600,
        env={},
        workdir_digest=None,
    )


def submit(runtime: Runtime, actor: Actor, name: str, argv: list[str]) -> int:
    with runtime.transaction() as session:
        job = job_service.submit_job(
            session,
            actor=actor,
            request=request(name, argv),
            partitions=runtime.partitions(),
            now=runtime.clock(),
        )
    return job.id


def insert_service(runtime: Runtime, actor: Actor, n: int, batch: int = 500) -> None:
    partitions = runtime.partitions()
    for start in range(0, n, batch):
        with runtime.transaction() as session:
            for i in range(start, min(n, start + batch)):
                job_service.submit_job(
                    session,
                    actor=actor,
                    request=request(f"pending-{i}", ["true"]),
                    partitions=partitions,
                    now=runtime.clock(),
                )


def insert_bulk(runtime: Runtime, actor: Actor, n: int, batch: int = 2000) -> None:
    """The rows submit_job writes (job and its first event; not the audit record), many at a time."""
    with runtime.reading() as session:
        project_id = session.scalar(select(ProjectRow.id).where(ProjectRow.name == "default"))
    for start in range(0, n, batch):
        now = runtime.clock()
        rows = [
            {
                "name": f"pending-{i}",
                "project_id": project_id,
                "user_id": actor.user_id,
                "state": JobState.PENDING.value,
                "argv": ["true"],
                "env": {},
                "cpus": 1,
                "memory_bytes": MEMORY,
                "gpus": 0,
                "time_limit_s": 3600,
                "workdir_digest": None,
                "backend": runtime.backend.name,
                "submitted_at": now,
                "reason": job_service.QUEUED_REASON,
            }
            for i in range(start, min(n, start + batch))
        ]
        with runtime.transaction() as session:
            ids = list(session.scalars(insert(JobRow).returning(JobRow.id), rows))
            session.execute(
                insert(JobEventRow),
                [
                    {
                        "job_id": job_id,
                        "at": now,
                        "from_state": None,
                        "to_state": JobState.PENDING.value,
                        "actor": actor.label,
                    }
                    for job_id in ids
                ],
            )


def timed_pass(runtime: Runtime) -> tuple[float, dict[str, float], int]:
    start = time.perf_counter()
    report = runtime.controller.run_pass()
    return time.perf_counter() - start, dict(report.timings), report.pending


def steps_ms(timings: list[dict[str, float]], q: float) -> dict[str, float]:
    if not timings:
        return {}
    return {step: percentile([t.get(step, 0.0) for t in timings], q) * 1000 for step in timings[0]}


def fresh_controller(running: Any) -> Any:
    """A new Controller with the same arguments as `running` (whatever this version's signature)."""
    parameters = inspect.signature(type(running).__init__).parameters
    kwargs = {name: getattr(running, name) for name in parameters if hasattr(running, name)}
    return type(running)(**kwargs)


def time_query(runtime: Runtime, sql: str, n: int) -> tuple[list[float], int]:
    times, rows = [], 0
    for _ in range(n):
        with runtime.engine.connect() as conn:
            start = time.perf_counter()
            rows = len(conn.execute(text(sql)).all())
            times.append(time.perf_counter() - start)
    return times, rows


def bench_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fabriek-bench-pass-"))
    runtime: Runtime | None = None
    try:
        with database(kind, args.pg_url) as url:
            settings = Settings(
                home=home, cpus=1, memory="64G", gpus="none", database_url=url, log_level="warning"
            )
            runtime = build_runtime(settings)
            upgrade(runtime.engine)
            with runtime.transaction() as session:
                token = bootstrap(session, admin_name="bench", now=runtime.clock())
            assert token is not None
            with runtime.reading() as session:
                actor = authenticate(session, token=token, now=runtime.clock())

            blocker = submit(runtime, actor, "blocker", ["sleep", "3600"])
            deadline = time.monotonic() + 30
            while True:
                runtime.controller.run_pass()
                with runtime.reading() as session:
                    state = session.scalar(select(JobRow.state).where(JobRow.id == blocker))
                if state == JobState.RUNNING.value:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the blocker job is {state} after 30 s, not running")
                time.sleep(0.02)

            print(f"[{kind}] inserting {args.jobs} pending jobs ({args.insert}) ...", flush=True)
            began = time.perf_counter()
            (insert_bulk if args.insert == "bulk" else insert_service)(runtime, actor, args.jobs)
            insert_s = time.perf_counter() - began

            wait_for_quiet(args.wait_quiet)
            first_s, first_steps, pending = timed_pass(runtime)
            print(f"[{kind}] first pass {first_s * 1000:.0f} ms; steady passes ...", flush=True)
            monitor = CpuMonitor()
            steady: list[float] = []
            steady_steps: list[dict[str, float]] = []
            for _ in range(args.passes):
                seconds, steps, _ = timed_pass(runtime)
                steady.append(seconds)
                steady_steps.append(steps)

            full: list[float] = []
            full_steps: list[dict[str, float]] = []
            for _ in range(min(args.passes, 20)):
                controller = fresh_controller(runtime.controller)
                start = time.perf_counter()
                report = controller.run_pass()
                full.append(time.perf_counter() - start)
                full_steps.append(dict(report.timings))
            cpu = monitor.stop()

            profile_text = None
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.profile):
                    fresh_controller(runtime.controller).run_pass()
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                profile_text = out.getvalue()

            incremental: list[float] = []
            for i in range(args.incremental):
                submit(runtime, actor, f"late-{i}", ["true"])
                seconds, _, _ = timed_pass(runtime)
                incremental.append(seconds)

            ids_times, id_rows = time_query(runtime, BASELINE_IDS, max(args.passes, 5))
            col_times, _ = time_query(runtime, BASELINE_COLUMNS, max(args.passes, 5))

            problems = []
            with runtime.reading() as session:
                state = session.scalar(select(JobRow.state).where(JobRow.id == blocker))
                waiting = session.scalar(
                    select(JobRow.reason).where(JobRow.state == JobState.PENDING.value).limit(1)
                )
            if state != JobState.RUNNING.value:
                problems.append(f"the blocker ended up {state}")
            if pending != args.jobs:
                problems.append(f"the first pass saw {pending} pending jobs, not {args.jobs}")
            if waiting == job_service.QUEUED_REASON:
                problems.append("the first pass did not write the waiting reasons")

            with runtime.reading() as session:
                handle = session.scalar(select(JobRow.handle).where(JobRow.id == blocker))
            if handle:
                runtime.backend.cancel(blocker, handle)
            runtime.close()
            runtime = None
            steady_median = statistics.median(steady)
            ids_median = statistics.median(ids_times)
            return {
                "database": kind,
                "pending_jobs": pending,
                "insert": args.insert,
                "insert_seconds": insert_s,
                "first_pass_ms": first_s * 1000,
                "first_pass_steps_ms": {k: v * 1000 for k, v in first_steps.items()},
                "steady": summary_ms(steady),
                "steady_steps_p50_ms": steps_ms(steady_steps, 50),
                "steady_steps_p90_ms": steps_ms(steady_steps, 90),
                "full": summary_ms(full),
                "full_steps_p50_ms": steps_ms(full_steps, 50),
                "incremental": summary_ms(incremental),
                "baseline_select_ids": summary_ms(ids_times),
                "baseline_rows": id_rows,
                "baseline_select_pass_columns": summary_ms(col_times),
                "steady_median_over_baseline": steady_median / ids_median if ids_median else None,
                "waiting_reason": waiting,
                "profile": profile_text,
                "steady_cpu_cores": cpu,
                "problems": problems,
            }
    finally:
        if runtime is not None:
            runtime.close()
        kill_job_processes(home / "jobs")
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="pending jobs")
    parser.add_argument("--passes", type=int, default=50, help="steady-state passes to time")
    parser.add_argument(
        "--incremental", type=int, default=20, help="passes timed right after one more submission"
    )
    parser.add_argument("--insert", choices=("bulk", "service"), default="bulk")
    parser.add_argument(
        "--databases", default=",".join(DATABASES), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server, no database")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile N more full passes"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 10 passes, 5 incremental")
    common_options(parser)
    args = parser.parse_args()
    exit_on_sigterm()
    host = machine()
    print(describe(host), flush=True)
    if args.quick:
        args.jobs, args.passes, args.incremental = 1_000, 10, 5
    started = datetime.now().isoformat(timespec="seconds")

    results = [bench_database(kind.strip(), args) for kind in args.databases.split(",")]
    print()
    print(
        table(
            [
                "database",
                "pending",
                "first pass ms",
                "steady p50 ms",
                "steady p90 ms",
                "full p50 ms",
                "full p90 ms",
                "after 1 submit p50 ms",
                "SELECT id p50 ms",
                "SELECT pass cols p50 ms",
                "steady p50 / SELECT id",
            ],
            [
                [
                    r["database"],
                    r["pending_jobs"],
                    r["first_pass_ms"],
                    r["steady"]["p50_ms"],
                    r["steady"]["p90_ms"],
                    r["full"]["p50_ms"],
                    r["full"]["p90_ms"],
                    r["incremental"].get("p50_ms", float("nan")),
                    r["baseline_select_ids"]["p50_ms"],
                    r["baseline_select_pass_columns"]["p50_ms"],
                    r["steady_median_over_baseline"] or float("nan"),
                ]
                for r in results
            ],
        )
    )
    print()
    print(
        table(
            ["database", "pass", *STEPS],
            [
                [r["database"], label, *(steps.get(s, float("nan")) for s in STEPS)]
                for r in results
                for label, steps in (
                    ("first", r["first_pass_steps_ms"]),
                    ("steady p50", r["steady_steps_p50_ms"]),
                    ("steady p90", r["steady_steps_p90_ms"]),
                    ("full p50", r["full_steps_p50_ms"]),
                )
            ],
        )
        + "\n(milliseconds per step)"
    )
    for r in results:
        print(f"{r['database']}: steady and full passes: {describe_cpu(r['steady_cpu_cores'])}")
        cpu = r["steady_cpu_cores"]
        if foreign_load(cpu, uses_postgres=r["database"] == "postgres") > NOISY:
            print(
                f"{r['database']}: WARNING: other load on the machine during the steady and full passes"
            )
        print(f"{r['database']}: inserted {r['pending_jobs']} jobs in {r['insert_seconds']:.1f} s")
        if r["profile"]:
            print(f"--- {r['database']}: cProfile of {args.profile} full passes ---")
            print(r["profile"])
        for problem in r["problems"]:
            print(f"{r['database']}: PROBLEM: {problem}")
    write_json(
        args.json,
        {
            "benchmark": "controller_pass",
            "started": started,
            "machine": host,
            "args": vars(args),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
