"""Submission throughput: how many jobs per second `POST /api/v1/jobs` accepts with concurrent clients.

Goal (issue): at least 500 submissions/s sustained on 2 cores, for 20,000 jobs, on SQLite and on
PostgreSQL.

How it measures, for each database (SQLite, then a throwaway PostgreSQL database, by default):

1. Start `fabriek up` on a temporary home with FABRIEK_CPUS=1, so one job fills the machine.
2. Submit one blocker job (`sleep 3600`, 1 CPU) and wait until it runs: every later job stays pending,
   so no job process competes with the server for the CPUs.
3. Baseline: `--health-requests` GET /api/v1/health (no token, reads the database with SELECT 1,
   writes nothing) with the same client and concurrency. The ratio submit rate / health rate says
   how much of the plain request cost a submission adds, and survives machine drift better than
   the raw rate.
4. Submit `--jobs` jobs (1 CPU each, argv `true`) through `--concurrency` concurrent clients, each on
   its own keep-alive connection, timing each request. Reported: total time, rate, request latency
   p50/p99, the server's CPU time per request (hardly moved by other load, unlike a rate), and the
   rate in each tenth of the run: the queue grows as it goes, and every submission wakes the
   controller. The minimum of those ten rates is the "sustained" rate the goal is checked against.
5. Check the outcome: every response was 201, the newest job is pending with queue_position
   (older jobs waiting in its pool) within `--concurrency` of jobs - 1, the blocker still runs. Then cancel the blocker, stop the server (SIGINT), kill any job
   process left behind and drop the PostgreSQL database.

Every result carries who used the CPUs meanwhile (this benchmark and its server, PostgreSQL, other
processes, steal) and is flagged when other load took more than 0.2 cores; `--wait-quiet S` waits up
to S seconds before each measurement for other load to end (the machine may be shared).

The load generator runs in this process and its CPU time is reported next to the server's, so one
can tell who was the bottleneck. `--client raw` (default) is a minimal HTTP/1.1 keep-alive client
on asyncio streams: on a 2-core machine it needs about a tenth of a core, so the server gets the
rest. `--client asyncio` (httpx.AsyncClient) and `--client threads` (one httpx.Client per thread)
are the realistic SDK-style clients; they need 0.5-1 core themselves on a small machine and then
measure the client as much as the server.

    python benchmarks/submit_throughput.py                 # 20,000 jobs on SQLite and PostgreSQL
    python benchmarks/submit_throughput.py --quick         # 500 jobs each, a smoke run
    python benchmarks/submit_throughput.py --databases sqlite --concurrency 32 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from _harness import (
    DATABASES,
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

GOAL_RATE = 500.0
CLIENTS = ("raw", "asyncio", "threads")

Request = tuple[str, str, dict[str, Any] | None]  # method, path under /api/v1, JSON body
MakeRequest = Callable[[int], Request]


@dataclass
class Run:
    """The outcome of N requests: per-request latency, completion times, failures."""

    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)  # completion times since the run began
    statuses: dict[int, int] = field(default_factory=dict)  # -1: no answer (transport error)
    errors: list[str] = field(default_factory=list)
    max_id: int = 0  # the newest job id a 201 answered with
    stopped_early: bool = False
    cpu: dict[str, float] = field(default_factory=dict)  # CpuMonitor: who used the machine
    server_cpu_s: float = 0.0  # CPU time the server process used during the run
    client_cpu_s: float = 0.0  # CPU time this process (the load generator) used during the run

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def record(self, began: float, start: float, end: float, status: int, body: bytes) -> None:
        self.latencies.append(end - start)
        self.done_at.append(end - began)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 201:
            self.max_id = max(self.max_id, int(json.loads(body)["id"]))
        elif status != 200 and len(self.errors) < 5:
            self.errors.append(f"{status}: {body[:300]!r}")


# --- the clients --------------------------------------------------------------------------------
async def _raw_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise RuntimeError("the raw client does not read chunked responses")
    if length is None:
        raise RuntimeError("a response without Content-Length")
    return status, await reader.readexactly(length)


def _raw_request(server: Server, method: str, path: str, body: dict[str, Any] | None) -> bytes:
    host = urlsplit(server.url).netloc
    head = f"{method} /api/v1{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.token}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _run_raw(
    server: Server, n: int, concurrency: int, make: MakeRequest, deadline: float
) -> Run:
    run = Run(requests=n)
    counter = itertools.count()
    began = time.perf_counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            while (i := next(counter)) < n:
                if time.perf_counter() > deadline:
                    run.stopped_early = True
                    return
                request = _raw_request(server, *make(i))
                start = time.perf_counter()
                try:
                    status, body = await _raw_exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                    run.record(began, start, time.perf_counter(), -1, repr(exc).encode())
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    continue
                run.record(began, start, time.perf_counter(), status, body)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - began
    return run


async def _run_httpx_async(
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
                    run.record(began, start, time.perf_counter(), -1, repr(exc).encode())
                    continue
                run.record(
                    began, start, time.perf_counter(), response.status_code, response.content
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
    return run


def _run_httpx_threads(
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
                    response = client.request(method, path, json=body)
                    status, content = response.status_code, response.content
                except httpx.HTTPError as exc:
                    status, content = -1, repr(exc).encode()
                end = time.perf_counter()
                with lock:
                    run.record(began, start, end, status, content)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - began
    return run


def load(
    server: Server, n: int, concurrency: int, make: MakeRequest, client: str, max_s: float
) -> Run:
    """Send n requests through `concurrency` workers; stop early (and say so) after max_s."""
    deadline = time.perf_counter() + max_s
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    monitor = CpuMonitor(server.proc.pid)
    if client == "raw":
        run = asyncio.run(_run_raw(server, n, concurrency, make, deadline))
    elif client == "asyncio":
        run = asyncio.run(_run_httpx_async(server, n, concurrency, make, deadline))
    else:
        run = _run_httpx_threads(server, n, concurrency, make, deadline)
    run.cpu = monitor.stop()
    run.server_cpu_s = server.cpu_seconds() - server_cpu
    run.client_cpu_s = time.process_time() - client_cpu
    return run


# --- the benchmark ------------------------------------------------------------------------------
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


def get_job(server: Server, job_id: int) -> dict[str, Any]:
    response = httpx.get(f"{server.api}/jobs/{job_id}", headers=server.headers, timeout=60)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def wait_for_state(
    server: Server, job_id: int, states: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(server, job_id)
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} is {job['state']}, not in {states}, after {timeout}s")
        time.sleep(0.05)


def phase_summary(run: Run) -> dict[str, Any]:
    return {
        "requests": len(run.latencies),
        "seconds": run.seconds,
        "rate_per_s": run.rate,
        "latency": summary_ms(run.latencies),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "server_cpu_util": run.server_cpu_s / run.seconds if run.seconds else None,
        # CPU the server spent per request: unlike a rate, barely moved by other load on the machine
        "server_cpu_ms_per_request": run.server_cpu_s / len(run.latencies) * 1000
        if run.latencies
        else None,
        "client_cpu_util": run.client_cpu_s / run.seconds if run.seconds else None,
        "stopped_early": run.stopped_early,
        "cpu_cores": run.cpu,
    }


def bench_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    extra = {"FABRIEK_WORKERS": str(args.workers)} if args.workers else {}
    with (
        database(kind, args.pg_url) as url,
        fabriek_server(database_url=url, cpus=1, extra_env=extra) as server,
    ):
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
        wait_for_quiet(args.wait_quiet, server.proc.pid)
        print(f"[{kind}] baseline: {args.health_requests} x GET /health ...", flush=True)
        baseline = load(
            server, args.health_requests, args.concurrency, health, args.client, args.max_seconds
        )
        print(f"[{kind}] {baseline.rate:,.0f} req/s; now {args.jobs} x POST /jobs ...", flush=True)
        wait_for_quiet(args.wait_quiet, server.proc.pid)
        run = load(server, args.jobs, args.concurrency, submit, args.client, args.max_seconds)
        print(f"[{kind}] {run.rate:,.0f} submissions/s", flush=True)

        problems = list(run.errors) + list(baseline.errors)
        accepted = run.statuses.get(201, 0)
        if accepted != len(run.latencies):
            problems.append(f"only {accepted} of {len(run.latencies)} submissions answered 201")
        if baseline.statuses.get(200, 0) != len(baseline.latencies):
            problems.append(f"health answered {baseline.statuses}")
        position = None
        if run.max_id:
            last = get_job(server, run.max_id)
            position = last.get("queue_position")
            if last["state"] != "pending":
                problems.append(f"job {run.max_id} is {last['state']}, expected pending")
            # Older jobs of its pool by submission time: with concurrent clients a few jobs with
            # lower ids may carry a later submission time (ids come before the clock on PostgreSQL).
            low = accepted - args.concurrency
            if position is None or not low <= position <= accepted - 1:
                problems.append(
                    f"newest job's queue_position is {position}, not {low} to {accepted - 1}"
                )
        blocker_now = get_job(server, blocker_id)
        if blocker_now["state"] != "running":
            problems.append(f"the blocker is {blocker_now['state']}, expected running")
        httpx.post(f"{server.api}/jobs/{blocker_id}/cancel", headers=server.headers, timeout=60)

        windows = window_rates(run.done_at)
        sustained = min(windows) if windows else run.rate
        return {
            "database": kind,
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "workers": args.workers or None,
            "client": args.client,
            "submit": phase_summary(run),
            "health": phase_summary(baseline),
            "submitted": accepted,
            "sustained_rate_per_s": sustained,
            "window_rates_per_s": windows,
            "ratio_to_health": run.rate / baseline.rate if baseline.rate else None,
            "queue_position_of_newest": position,
            "meets_goal": sustained >= GOAL_RATE and not run.stopped_early,
            "problems": problems,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="submissions per database")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--health-requests", type=int, default=5_000, help="GET /health requests for the baseline"
    )
    parser.add_argument("--client", choices=CLIENTS, default="raw", help="load generator")
    parser.add_argument(
        "--workers", type=int, default=0, help="API processes of the server (default: its own)"
    )
    parser.add_argument(
        "--databases", default=",".join(DATABASES), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server, no database")
    parser.add_argument(
        "--max-seconds", type=float, default=300, help="stop each phase after this long"
    )
    parser.add_argument("--quick", action="store_true", help="500 jobs, 500 health requests")
    common_options(parser)
    args = parser.parse_args()
    exit_on_sigterm()
    host = machine()
    print(describe(host), flush=True)
    if args.quick:
        args.jobs, args.health_requests = 500, 500

    results = [bench_database(kind.strip(), args) for kind in args.databases.split(",")]
    print()
    print(f"client {args.client}, concurrency {args.concurrency}")
    print(
        table(
            [
                "database",
                "jobs",
                "total s",
                "submit/s",
                "sustained/s",
                "p50 ms",
                "p99 ms",
                "server CPU",
                "CPU ms/submit",
                "health/s",
                "CPU ms/health",
                "health p50/p99 ms",
                "ratio",
                "goal 500/s",
            ],
            [
                [
                    r["database"],
                    r["submitted"],
                    r["submit"]["seconds"],
                    r["submit"]["rate_per_s"],
                    r["sustained_rate_per_s"],
                    r["submit"]["latency"].get("p50_ms", float("nan")),
                    r["submit"]["latency"].get("p99_ms", float("nan")),
                    f"{r['submit']['server_cpu_util']:.0%}",
                    r["submit"]["server_cpu_ms_per_request"] or float("nan"),
                    r["health"]["rate_per_s"],
                    r["health"]["server_cpu_ms_per_request"] or float("nan"),
                    "{:.1f} / {:.1f}".format(
                        r["health"]["latency"].get("p50_ms", float("nan")),
                        r["health"]["latency"].get("p99_ms", float("nan")),
                    ),
                    r["ratio_to_health"] or float("nan"),
                    "met" if r["meets_goal"] else "MISSED",
                ]
                for r in results
            ],
        )
    )
    for r in results:
        windows = ", ".join(f"{w:,.0f}" for w in r["window_rates_per_s"])
        print(f"{r['database']}: submissions/s in each tenth of the run: {windows}")
        print(
            f"{r['database']}: CPU use during submit: server {r['submit']['server_cpu_util']:.0%}, "
            f"load generator {r['submit']['client_cpu_util']:.0%}; during health: server "
            f"{r['health']['server_cpu_util']:.0%}, load generator "
            f"{r['health']['client_cpu_util']:.0%} (100% = one core)"
        )
        for phase in ("health", "submit"):
            cpu = r[phase]["cpu_cores"]
            print(f"{r['database']}: {phase}: {describe_cpu(cpu)}")
            if foreign_load(cpu, uses_postgres=r["database"] == "postgres") > NOISY:
                print(f"{r['database']}: WARNING: other load on the machine during {phase}")
        if r["submit"]["stopped_early"] or r["health"]["stopped_early"]:
            print(f"{r['database']}: stopped early after --max-seconds {args.max_seconds}")
        for problem in r["problems"]:
            print(f"{r['database']}: PROBLEM: {problem}")
    write_json(
        args.json,
        {
            "benchmark": "submit_throughput",
            "machine": host,
            "args": vars(args),
            "goal_rate_per_s": GOAL_RATE,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
