"""Submission throughput: how many jobs per second `POST /api/v1/jobs` accepts with concurrent clients.

Goal (issue): at least 500 submissions/s sustained on 2 cores, for 20,000 jobs, on SQLite and on
PostgreSQL.

How it measures, for each database (SQLite, then a throwaway PostgreSQL database, by default):

1. Start `fabriek up` on a temporary home with FABRIEK_CPUS=1, so one job fills the machine.
2. Submit one blocker job (`sleep 3600`, 1 CPU) and wait until it runs: every later job stays pending,
   so no job process competes with the server for the CPUs.
3. Baseline: `--health-requests` GET /api/v1/health (reads the database, writes nothing, no token)
   with the same client setup and concurrency. The ratio submit rate / health rate survives machine
   drift better than the raw rate.
4. Submit `--jobs` jobs (1 CPU each, `true`) through `--concurrency` concurrent clients over
   keep-alive connections and time each request. Reported: total time, rate, request latency
   p50/p99, and the rate in each tenth of the run (the queue grows as it goes, and every submission
   wakes the controller, whose pass reads the whole pending queue), whose minimum is the "sustained"
   rate.
5. Check the result: every response was 201, the last job's queue_position is jobs - 1, the blocker
   still runs. Then cancel the blocker, stop the server, kill any job process left and drop the
   PostgreSQL database.

The load generator runs in this process (httpx; asyncio by default, or one thread per client).
On a 2-core machine it takes about one core and the server (one Python process) the other.

    python benchmarks/submit_throughput.py                 # 20,000 jobs on SQLite and PostgreSQL
    python benchmarks/submit_throughput.py --quick         # 500 jobs each, a smoke run
    python benchmarks/submit_throughput.py --databases sqlite --concurrency 32 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from _harness import (
    DATABASES,
    DEFAULT_PG,
    Server,
    database,
    fabriek_server,
    job_body,
    machine,
    summary_ms,
    table,
    write_json,
)

GOAL_RATE = 500.0


@dataclass
class Run:
    """The outcome of N requests: per-request latency, completion times, failures."""

    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)  # completion times since the run began
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last_body: dict[str, Any] | None = None
    max_id: int = 0
    stopped_early: bool = False
    server_cpu_s: float = 0.0  # CPU time the server process used during the run
    client_cpu_s: float = 0.0  # CPU time this process (the load generator) used during the run

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def record(
        self, began: float, start: float, end: float, response: httpx.Response | None
    ) -> None:
        self.latencies.append(end - start)
        self.done_at.append(end - began)
        if response is None:
            return
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 201:
            body = response.json()
            if body["id"] > self.max_id:
                self.max_id, self.last_body = body["id"], body
        elif response.status_code != 200 and len(self.errors) < 5:
            self.errors.append(f"{response.status_code}: {response.text[:300]}")


Request = tuple[str, str, dict[str, Any] | None]  # method, path, JSON body
MakeRequest = Callable[[int], Request]


async def _run_async(
    server: Server, n: int, concurrency: int, make: MakeRequest, deadline: float
) -> Run:
    run = Run(requests=n)
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.api, headers=server.headers, limits=limits, timeout=60
    ) as client:
        began = time.perf_counter()

        async def worker() -> None:
            while (i := next(counter)) < n:
                if time.perf_counter() > deadline:
                    run.stopped_early = True
                    return
                method, path, body = make(i)
                start = time.perf_counter()
                try:
                    response = await client.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    run.record(began, start, time.perf_counter(), None)
                    run.statuses[-1] = run.statuses.get(-1, 0) + 1
                    if len(run.errors) < 5:
                        run.errors.append(repr(exc))
                    continue
                run.record(began, start, time.perf_counter(), response)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
    return run


def _run_threads(
    server: Server, n: int, concurrency: int, make: MakeRequest, deadline: float
) -> Run:
    run = Run(requests=n)
    counter = itertools.count()
    lock = threading.Lock()
    began = time.perf_counter()

    def worker() -> None:
        with httpx.Client(base_url=server.api, headers=server.headers, timeout=60) as client:
            while (i := next(counter)) < n:
                if time.perf_counter() > deadline:
                    run.stopped_early = True
                    return
                method, path, body = make(i)
                start = time.perf_counter()
                try:
                    response: httpx.Response | None = client.request(method, path, json=body)
                    error = None
                except httpx.HTTPError as exc:
                    response, error = None, repr(exc)
                end = time.perf_counter()
                with lock:
                    run.record(began, start, end, response)
                    if error is not None:
                        run.statuses[-1] = run.statuses.get(-1, 0) + 1
                        if len(run.errors) < 5:
                            run.errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - began
    return run


def load(
    server: Server, n: int, concurrency: int, make: MakeRequest, client: str, max_s: float
) -> Run:
    deadline = time.perf_counter() + max_s
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    if client == "asyncio":
        run = asyncio.run(_run_async(server, n, concurrency, make, deadline))
    else:
        run = _run_threads(server, n, concurrency, make, deadline)
    run.server_cpu_s = server.cpu_seconds() - server_cpu
    run.client_cpu_s = time.process_time() - client_cpu
    return run


def window_rates(done_at: list[float], windows: int = 10) -> list[float]:
    """Requests per second in each consecutive tenth (by count) of the completed requests."""
    times = sorted(done_at)
    if len(times) < windows * 2:
        return []
    size = len(times) // windows
    rates, previous = [], 0.0
    for w in range(windows):
        end = times[(w + 1) * size - 1]
        rates.append(size / (end - previous) if end > previous else float("inf"))
        previous = end
    return rates


def wait_for_state(
    server: Server, job_id: int, states: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{server.api}/jobs/{job_id}", headers=server.headers, timeout=30).json()
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"job {job_id} is {job['state']}, not one of {states}, after {timeout}s"
            )
        time.sleep(0.05)


def bench_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with database(kind, args.pg_url) as url, fabriek_server(database_url=url, cpus=1) as server:
        blocker = httpx.post(
            f"{server.api}/jobs",
            headers=server.headers,
            json=job_body("blocker", ["sleep", "3600"]),
            timeout=30,
        )
        blocker.raise_for_status()
        blocker_id = blocker.json()["id"]
        wait_for_state(server, blocker_id, {"running"})

        def health(_: int) -> Request:
            return ("GET", "/health", None)

        def submit(i: int) -> Request:
            return ("POST", "/jobs", job_body(f"bench-{i}", ["true"]))

        load(server, min(200, args.health_requests), args.concurrency, health, args.client, 60)
        print(f"[{kind}] baseline: {args.health_requests} GET /health ...", flush=True)
        baseline = load(
            server, args.health_requests, args.concurrency, health, args.client, args.max_seconds
        )
        print(f"[{kind}] {baseline.rate:,.0f} req/s; now {args.jobs} submissions ...", flush=True)
        run = load(server, args.jobs, args.concurrency, submit, args.client, args.max_seconds)
        print(f"[{kind}] {run.rate:,.0f} submissions/s", flush=True)

        problems = list(run.errors)
        accepted = run.statuses.get(201, 0)
        if accepted != len(run.latencies):
            problems.append(f"only {accepted} of {len(run.latencies)} submissions answered 201")
        if baseline.statuses.get(200, 0) != len(baseline.latencies):
            problems.append(f"health answered {baseline.statuses}")
        position = None
        if run.last_body is not None:
            last = httpx.get(
                f"{server.api}/jobs/{run.max_id}", headers=server.headers, timeout=60
            ).json()
            position = last.get("queue_position")
            if last["state"] != "pending":
                problems.append(f"job {run.max_id} is {last['state']}, expected pending")
            if position != accepted - 1:
                problems.append(f"last job's queue_position is {position}, expected {accepted - 1}")
        blocker_now = httpx.get(
            f"{server.api}/jobs/{blocker_id}", headers=server.headers, timeout=60
        ).json()
        if blocker_now["state"] != "running":
            problems.append(f"the blocker is {blocker_now['state']}, expected running")
        httpx.post(f"{server.api}/jobs/{blocker_id}/cancel", headers=server.headers, timeout=60)

        windows = window_rates(run.done_at)
        latency = summary_ms(run.latencies)
        return {
            "database": kind,
            "jobs": args.jobs,
            "submitted": accepted,
            "concurrency": args.concurrency,
            "client": args.client,
            "seconds": run.seconds,
            "rate_per_s": run.rate,
            "sustained_rate_per_s": min(windows) if windows else run.rate,
            "window_rates_per_s": windows,
            "latency": latency,
            "health_requests": len(baseline.latencies),
            "health_seconds": baseline.seconds,
            "health_rate_per_s": baseline.rate,
            "health_latency": summary_ms(baseline.latencies),
            "ratio_to_health": run.rate / baseline.rate if baseline.rate else None,
            "queue_position_of_last": position,
            "stopped_early": run.stopped_early or baseline.stopped_early,
            "meets_goal": min(windows or [run.rate]) >= GOAL_RATE,
            "problems": problems,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="submissions per database")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--health-requests", type=int, default=5_000, help="GET /health requests for the baseline"
    )
    parser.add_argument("--client", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument(
        "--databases", default=",".join(DATABASES), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server, without database")
    parser.add_argument(
        "--max-seconds", type=float, default=300, help="stop each phase after this long"
    )
    parser.add_argument("--quick", action="store_true", help="500 jobs, 500 health requests")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.health_requests = 500, 500

    results = [bench_database(kind.strip(), args) for kind in args.databases.split(",")]
    print()
    print(
        table(
            [
                "database",
                "jobs",
                "conc.",
                "total s",
                "submit/s",
                "sustained/s",
                "p50 ms",
                "p99 ms",
                "health/s",
                "ratio",
                "goal 500/s",
            ],
            [
                [
                    r["database"],
                    r["submitted"],
                    r["concurrency"],
                    r["seconds"],
                    r["rate_per_s"],
                    r["sustained_rate_per_s"],
                    r["latency"].get("p50_ms", float("nan")),
                    r["latency"].get("p99_ms", float("nan")),
                    r["health_rate_per_s"],
                    r["ratio_to_health"] or float("nan"),
                    "met" if r["meets_goal"] else "MISSED",
                ]
                for r in results
            ],
        )
    )
    for r in results:
        windows = ", ".join(f"{w:,.0f}" for w in r["window_rates_per_s"])
        print(f"{r['database']}: rate per tenth of the run: {windows}")
        health = r["health_latency"]
        print(
            f"{r['database']}: health p50 {health.get('p50_ms', 0):.1f} ms, "
            f"p99 {health.get('p99_ms', 0):.1f} ms"
        )
        for problem in r["problems"]:
            print(f"{r['database']}: PROBLEM: {problem}")
    write_json(
        args.json,
        {
            "benchmark": "submit_throughput",
            "machine": machine(),
            "args": vars(args),
            "goal_rate_per_s": GOAL_RATE,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
