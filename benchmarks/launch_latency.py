"""Launch latency on the local backend: from a job's submission to its process having started.

Goal (issue): p50 <= 50 ms and p99 <= 250 ms over 1,000 jobs.

How it measures:

1. Baselines, in this process before the server starts: the wall time of
   `subprocess.Popen([sys.executable, "-I", "-c", "pass"]).wait()` (a bare interpreter: the local
   backend starts every job under a `python -I shim.py` supervisor), of `subprocess.Popen(["true"])
   .wait()` (a bare fork/exec), and, for reference, of `python -I -c "import <what shim.py imports>"`.
2. Start `fabriek up` on a temporary home with FABRIEK_CPUS=64 (`--cpus`), so no job ever waits
   for capacity.
3. Submit `--jobs` jobs with argv ["true"] and 1 CPU, one at a time (`--in-flight 1`): submit, wait
   until the job's supervisor wrote result.json (watched on the file system, which costs the server
   nothing), then GET /api/v1/jobs/{id} until the job is final. Five unmeasured warm-up jobs first.
4. Latency = started_at - submitted_at of each job, both recorded by fabriek: submitted_at by the API
   when it accepted the job, started_at by the job's supervisor right after its process was
   started. Split into admitted_at - submitted_at (the controller picks the job up and admits it)
   and started_at - admitted_at (job directory, supervisor start, command start).
5. Stop the server, kill any job process left behind, drop the PostgreSQL database if one was used.

Every result carries who used the CPUs meanwhile (this benchmark and its server, PostgreSQL, other
processes, steal) and is flagged when other load took more than 0.2 cores; `--wait-quiet S` waits up
to S seconds before each measurement for other load to end (the machine may be shared).

    python benchmarks/launch_latency.py                         # 1,000 jobs on SQLite
    python benchmarks/launch_latency.py --quick                 # 50 jobs
    python benchmarks/launch_latency.py --databases sqlite,postgres --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _harness import (
    DEFAULT_PG,
    NOISY,
    CpuMonitor,
    Server,
    common_options,
    database,
    describe,
    describe_cpu,
    exit_on_sigterm,
    fabriek_server,
    foreign_load,
    job_body,
    machine,
    summary_ms,
    table,
    wait_for_quiet,
    write_json,
)

GOAL_P50_MS = 50.0
GOAL_P99_MS = 250.0
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def _shim_dir() -> str:
    spec = importlib.util.find_spec("fabriek.backends.local.shim")
    assert spec is not None and spec.origin is not None
    return os.path.dirname(spec.origin)


def time_popen(argv: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.Popen(argv).wait()
        times.append(time.perf_counter() - start)
    return times


def baselines(n: int) -> dict[str, dict[str, float]]:
    cases = {
        "popen_python_pass": [sys.executable, "-I", "-c", "pass"],
        "popen_true": ["true"],
        # the supervisor's own start-up: the interpreter as the backend starts it, plus shim.py's imports
        "popen_python_import_shim": [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {_shim_dir()!r}); import shim",
        ],
    }
    for argv in cases.values():  # warm the page cache
        time_popen(argv, 3)
    return {name: summary_ms(time_popen(argv, n)) for name, argv in cases.items()}


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def find_job_dir(server: Server, job_id: int) -> Path | None:
    """The job's directory under the server's home: jobs/ID, or jobs/ID-SOMETHING in versions that
    tell apart the directories of different databases' jobs with the same id."""
    plain = server.jobs_dir / str(job_id)
    if plain.is_dir():
        return plain
    prefix = f"{job_id}-"
    try:
        with os.scandir(server.jobs_dir) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.is_dir():
                    return Path(entry.path)
    except FileNotFoundError:
        pass
    return None


def wait_final(
    server: Server, client: httpx.Client, job_id: int, timeout: float
) -> tuple[dict[str, Any], Path | None]:
    """The job as the API shows it once final (or at `timeout`), and its directory: waits for
    the directory, then its result.json, then the API's final state."""
    deadline = time.monotonic() + timeout
    job_dir = None
    while job_dir is None and time.monotonic() < deadline:
        job_dir = find_job_dir(server, job_id)
        time.sleep(0.002)
    while job_dir is not None and not (job_dir / "result.json").exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in FINAL or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return job, job_dir


def run_one(server: Server, client: httpx.Client, i: int, timeout: float) -> dict[str, Any]:
    """Submit one job, wait until it is final; return its timestamps (seconds since submission)."""
    sent = time.perf_counter()
    response = client.post("/jobs", json=job_body(f"launch-{i}", ["true"]))
    answered = time.perf_counter()
    response.raise_for_status()
    job_id = response.json()["id"]
    job, _ = wait_final(server, client, job_id, timeout)
    submitted, admitted, started = (
        _ts(job["submitted_at"]),
        _ts(job["admitted_at"]),
        _ts(job["started_at"]),
    )
    out: dict[str, Any] = {
        "id": job_id,
        "state": job["state"],
        "reason": job["reason"],
        "submit_request_s": answered - sent,
    }
    if submitted and started:
        out["latency_s"] = (started - submitted).total_seconds()
    if submitted and admitted:
        out["admit_s"] = (admitted - submitted).total_seconds()
    if admitted and started:
        out["start_s"] = (started - admitted).total_seconds()
    return out


def bench_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with (
        database(kind, args.pg_url) as url,
        fabriek_server(database_url=url, cpus=args.cpus) as server,
    ):
        results: list[dict[str, Any]] = []
        lock = threading.Lock()
        counter = iter(range(args.jobs))
        deadline = time.monotonic() + args.max_seconds
        stopped_early = False

        def worker() -> None:
            nonlocal stopped_early
            with httpx.Client(base_url=server.api, headers=server.headers, timeout=60) as client:
                for w in range(5 if args.jobs >= 20 else 1):
                    run_one(server, client, -1 - w, args.job_timeout)
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    if time.monotonic() > deadline:
                        stopped_early = True
                        return
                    one = run_one(server, client, i, args.job_timeout)
                    with lock:
                        results.append(one)

        print(f"[{kind}] {args.jobs} jobs, {args.in_flight} in flight ...", flush=True)
        wait_for_quiet(args.wait_quiet, server.proc.pid)
        monitor = CpuMonitor(server.proc.pid)
        began = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.in_flight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - began
        cpu = monitor.stop()

        problems = []
        bad = [r for r in results if r["state"] != "succeeded" or "latency_s" not in r]
        for r in bad[:5]:
            problems.append(f"job {r['id']} ended {r['state']}: {r['reason']}")
        if bad:
            problems.append(f"{len(bad)} of {len(results)} jobs did not succeed")
        latency = summary_ms([r["latency_s"] for r in results if "latency_s" in r])
        return {
            "database": kind,
            "jobs": len(results),
            "in_flight": args.in_flight,
            "cpus_declared": args.cpus,
            "seconds": seconds,
            "latency": latency,
            "admit": summary_ms([r["admit_s"] for r in results if "admit_s" in r]),
            "start": summary_ms([r["start_s"] for r in results if "start_s" in r]),
            "submit_request": summary_ms([r["submit_request_s"] for r in results]),
            "meets_goal": bool(latency.get("n"))
            and latency["p50_ms"] <= GOAL_P50_MS
            and latency["p99_ms"] <= GOAL_P99_MS,
            "stopped_early": stopped_early,
            "cpu_cores": cpu,
            "problems": problems,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000, help="measured jobs per database")
    parser.add_argument("--in-flight", type=int, default=1, help="jobs submitted at a time")
    parser.add_argument("--cpus", type=int, default=64, help="FABRIEK_CPUS of the server")
    parser.add_argument("--databases", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server, no database")
    parser.add_argument("--baseline-runs", type=int, default=200, help="runs of each baseline")
    parser.add_argument("--job-timeout", type=float, default=30, help="longest wait for one job")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop after this long")
    parser.add_argument("--quick", action="store_true", help="50 jobs, 30 baseline runs")
    common_options(parser)
    args = parser.parse_args()
    exit_on_sigterm()
    host = machine()
    print(describe(host), flush=True)
    if args.quick:
        args.jobs, args.baseline_runs = 50, 30

    print(f"baselines: {args.baseline_runs} runs each ...", flush=True)
    wait_for_quiet(args.wait_quiet)
    monitor = CpuMonitor()
    base = baselines(args.baseline_runs)
    base_cpu = monitor.stop()
    results = [bench_database(kind.strip(), args) for kind in args.databases.split(",")]

    print()
    print(
        table(
            ["baseline", "runs", "p50 ms", "p99 ms", "mean ms"],
            [[k, v["n"], v["p50_ms"], v["p99_ms"], v["mean_ms"]] for k, v in base.items()],
        )
    )
    print()
    python_p50 = base["popen_python_pass"]["p50_ms"]
    true_p50 = base["popen_true"]["p50_ms"]
    rows = []
    for r in results:
        lat = r["latency"]
        rows.append(
            [
                r["database"],
                r["jobs"],
                lat.get("p50_ms", float("nan")),
                lat.get("p99_ms", float("nan")),
                lat.get("max_ms", float("nan")),
                r["admit"].get("p50_ms", float("nan")),
                r["start"].get("p50_ms", float("nan")),
                lat.get("p50_ms", float("nan")) / python_p50,
                lat.get("p50_ms", float("nan")) / true_p50,
                "met" if r["meets_goal"] else "MISSED",
            ]
        )
    print(
        table(
            [
                "database",
                "jobs",
                "p50 ms",
                "p99 ms",
                "max ms",
                "submit->admit p50",
                "admit->start p50",
                "p50 / python",
                "p50 / true",
                "goal 50/250 ms",
            ],
            rows,
        )
    )
    print(f"baselines: {describe_cpu(base_cpu)}")
    if foreign_load(base_cpu, uses_postgres=False) > NOISY:
        print("baselines: WARNING: other load on the machine during the baselines")
    for r in results:
        print(f"{r['database']}: {describe_cpu(r['cpu_cores'])}")
        if foreign_load(r["cpu_cores"], uses_postgres=r["database"] == "postgres") > NOISY:
            print(f"{r['database']}: WARNING: other load on the machine during the run")
        if r["stopped_early"]:
            print(f"{r['database']}: stopped early after --max-seconds {args.max_seconds}")
        for problem in r["problems"]:
            print(f"{r['database']}: PROBLEM: {problem}")
    write_json(
        args.json,
        {
            "benchmark": "launch_latency",
            "machine": host,
            "args": vars(args),
            "goal_ms": {"p50": GOAL_P50_MS, "p99": GOAL_P99_MS},
            "baselines": base,
            "baselines_cpu_cores": base_cpu,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
