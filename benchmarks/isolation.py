"""The sandbox's cost (issue 22): a job's launch latency and its own speed, sandboxed and plain.

Goals (issue 22): the sandbox adds at most 20 ms to the p50 of submit -> running, and the whole
stays within the foundation's goal (p50 <= 50 ms); a CPU-bound and a memory-bound job run at most
2 % slower in the sandbox (median of >= 10 pairs' ratios, sandboxed / plain).

How it measures, everything in one run (the baseline of each figure is the plain job of the same
run: absolute times on a shared machine drift):

1. bubblewrap's own cost, in this process: the wall time of `Popen(["true"]).wait()` against
   that of `true` under the sandbox's command line as the local backend builds it
   (backends/local/sandbox.argv: bubblewrap, setpriv to uid 200001; no cgroup, no status fd),
   and, to tell where the difference goes, under setpriv alone, under a minimal bubblewrap
   (namespaces, `/` read-only, a /proc) and under the sandbox without setpriv; the cases take
   turns. Also a `python -I -S` importing shim.py, and jail.py besides (the supervisor's side of
   the sandbox, which the fork server may import once for all supervisors).
2. Launch latency through the real API: two `fabriek up` servers on temporary homes, one with
   FABRIEK_SANDBOX=1 and one with FABRIEK_SANDBOX=0, both up for the whole run. `--jobs` jobs to
   each, one at a time, alternating between the two (a pair's order flips every pair), so that
   the machine's noise hits both alike; five unmeasured warm-up jobs each first (a sandboxed
   server probes bubblewrap and the cgroups on its first launch). Each job is
   `date +%s.%N` with 1 CPU; the benchmark waits for its result.json (watched on the file
   system, as launch_latency.py does), then for the API to report it final. Three moments of
   each job, each against the `submitted_at` the API recorded:
   - `recorded`: `started_at` as fabriek records it, the figure of launch_latency.py and the
     foundation's goal. The supervisor stamps it before it starts the job's process (the job's
     time starts before its workdir is unpacked), so it does not include making the sandbox;
   - `running`: when the supervisor wrote started.json (its mtime), from which moment the
     backend's poll reports the job RUNNING; sandboxed, after bubblewrap reported its
     namespaces made. The goals are checked on this one;
   - `command`: the time the job's command printed, its first instruction: after bubblewrap
     mounted the sandbox and setpriv dropped to the project's uid.
   Every job is checked: a sandboxed job's orders (spec.marshal) carry a sandbox plan and its
   logs belong to its project's uid, not root; a plain job's orders carry none.
3. A job's own speed, in process with the real local backend: LocalBackend(sandbox=True), jobs
   as Identity(200001, 200001), against LocalBackend(sandbox=False). `--pairs` pairs of a
   CPU-bound job (a pure-Python loop calibrated to about `--work` CPU seconds here) and of a
   memory-bound one (rounds of: a fresh `--mem-mib` MiB buffer, every page faulted in and
   charged to the job's memory cgroup, copied into another; calibrated the same way), the
   order alternating. Each job times its own work (perf_counter and process_time around it,
   printed on its stdout with its uid), so neither launch nor teardown counts. Reported: the
   median of the pairs' ratios sandboxed / plain, of the wall time and of the CPU time.

Every phase carries who used the CPUs meanwhile (this benchmark and its servers, PostgreSQL,
other processes, steal) and is flagged when other load took more than 0.2 cores;
`--wait-quiet S` waits up to S seconds before each phase for other load to end. Needs root
(jobs run as uid 200001), bubblewrap and setpriv, as fabriek's full isolation does.

    python benchmarks/isolation.py                      # 1,000 jobs a mode, 10 pairs of 2 s jobs
    python benchmarks/isolation.py --quick              # 50 jobs a mode, 2 pairs of 0.5 s jobs
    python benchmarks/isolation.py --jobs 200 --pairs 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    kill_job_processes,
    machine,
    summary_ms,
    table,
    wait_for_quiet,
    write_json,
)
from launch_latency import wait_final

from fabriek.backends.base import LaunchSpec, Observation, Phase
from fabriek.backends.local import sandbox, shim
from fabriek.backends.local.backend import LocalBackend
from fabriek.core.identity import Identity, Network
from fabriek.core.jobs import Resources

GOAL_ADDED_P50_MS = 20.0
GOAL_P50_MS = 50.0
GOAL_RATIO = 1.02
MODES = ("sandboxed", "plain")
MOMENTS = ("recorded", "running", "command")
IDENTITY = Identity(200001, 200001, "bench")
LATENCY_ARGV = ["date", "+%s.%N"]  # its output is the moment its command ran

# The jobs of part 3 time their own work (`body`) and print it with who they ran as.
START = "import json, os, time\nw, c = time.perf_counter(), time.process_time()\n"
REPORT = (
    'print(json.dumps({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c, '
    '"uid": os.getuid()}))\n'
)


def cpu_body(n: int, size: int = 0) -> str:
    return f"x = 0\nfor i in range({n}):\n    x += i * i\n"


def memory_body(n: int, size: int) -> str:
    return (
        f"into = bytearray({size})\n"
        f"for _ in range({n}):\n"
        f"    fresh = bytearray({size})  # new pages: each faulted in (and charged to the cgroup)\n"
        "    into[:] = fresh\n"
        "    del fresh\n"
    )


BODIES = {"cpu": cpu_body, "memory": memory_body}


# --- 1. bubblewrap alone ----------------------------------------------------------------------
def bwrap_baseline(runs: int) -> tuple[dict[str, Any], str]:
    """Popen of `true`, bare and inside parts of the sandbox's command line, the cases taking
    turns; ({}, why) where this machine has no sandbox."""
    isolation = sandbox.probe(enabled=True)
    if isolation.bwrap is None or not isolation.as_root or isolation.setpriv is None:
        return {}, "; ".join(isolation.problems) or "not root"
    home = Path(tempfile.mkdtemp(prefix="fabriek-isolation-bwrap-"))
    try:
        for name in ("work", "output"):
            (home / name).mkdir()
            os.chown(home / name, IDENTITY.uid, IDENTITY.gid)
        job = sandbox.Job(0, str(home / "work"), str(home / "output"), Network.HOST, IDENTITY)
        line = sandbox.argv(isolation, job)
        at = line.index("--json-status-fd")  # no status pipe here: bubblewrap needs none
        line = line[:at] + line[at + 2 :]
        setpriv = line.index(isolation.setpriv)
        setpriv_end = line.index("--", setpriv) + 1  # then, in newer versions, the env shell
        minimal = [isolation.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        minimal += ["--unshare-cgroup-try", "--ro-bind", "/", "/", "--proc", "/proc", "--"]
        cases = {
            # the supervisor's start-up, as launch_latency.py times it, and what a sandboxed
            # job's supervisor needs besides (jail.py), which the fork server may import once
            "popen_python_import_shim": _python_importing(with_jail=False),
            "popen_python_import_shim_jail": _python_importing(with_jail=True),
            "popen_true": ["true"],
            "popen_setpriv_true": [*line[setpriv:setpriv_end], "true"],
            # namespaces, the whole system read-only and a /proc: what no sandbox does without
            "popen_bwrap_minimal_true": [*minimal, "true"],
            "popen_bwrap_true": [*line[:setpriv], "true"],  # the job's sandbox, as root
            "popen_sandbox_true": [*line, "true"],  # all a job's command runs under
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(runs + 3):  # the first three warm the page cache
            for name, argv in cases.items():
                took = _time_popen(argv)
                if i >= 3:
                    times[name].append(took)
        return {name: summary_ms(values) for name, values in times.items()}, ""
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _python_importing(*, with_jail: bool) -> list[str]:
    shim_dir = os.path.dirname(os.path.abspath(shim.__file__))
    root = os.path.dirname(os.path.dirname(os.path.dirname(shim_dir)))
    code = f"import sys; sys.path.insert(0, {shim_dir!r}); import shim"
    if with_jail:
        code += f"; sys.path.insert(0, {root!r}); import fabriek.backends.local.jail"
    return [sys.executable, "-I", "-S", "-c", code]


def _time_popen(argv: list[str]) -> float:
    """Wall time of one run of `argv`. Where it has bubblewrap read the job's environment from a
    descriptor (`--ro-bind-data FD`), a pipe holding PATH takes that descriptor's place."""
    fds: tuple[int, ...] = ()
    if "--ro-bind-data" in argv:
        read, write = os.pipe()
        os.write(write, f"export PATH={shlex.quote(os.defpath)}\n".encode())
        os.close(write)
        at = argv.index("--ro-bind-data") + 1
        argv, fds = [*argv[:at], str(read), *argv[at + 1 :]], (read,)
    try:
        began = time.perf_counter()
        if subprocess.Popen(argv, pass_fds=fds).wait() != 0:
            raise RuntimeError(f"{argv} failed")
        return time.perf_counter() - began
    finally:
        for fd in fds:
            os.close(fd)


# --- 2. launch latency through the API --------------------------------------------------------
def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def launch_one(server: Server, client: httpx.Client, i: int, timeout: float) -> dict[str, Any]:
    """Submit one job and wait until it is final; its moments in seconds since submission and
    what it ran as."""
    sent = time.perf_counter()
    response = client.post("/jobs", json=job_body(f"isolation-{i}", LATENCY_ARGV))
    response.raise_for_status()
    job_id = response.json()["id"]
    job, job_dir = wait_final(server, client, job_id, timeout)
    out: dict[str, Any] = {
        "until_final_s": time.perf_counter() - sent,  # the benchmark's round trip, for reference
        "id": job_id,
        "state": job["state"],
        "reason": job["reason"],
    }
    submitted = _ts(job["submitted_at"])
    if job_dir is None or submitted is None:
        return out
    moments = {"recorded": _ts(job["started_at"]), "admit": _ts(job["admitted_at"])}
    try:
        moments["running"] = (job_dir / "started.json").stat().st_mtime_ns / 1e9
        moments["command"] = float((job_dir / "stdout.log").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for name, at in moments.items():
        if at is not None:
            out[f"{name}_s"] = at - submitted
    with open(job_dir / "spec.marshal", "rb") as f:
        orders = marshal.load(f)
    out["sandbox_plan"] = bool(orders.get("sandbox"))
    try:
        out["log_uid"] = (job_dir / "stdout.log").stat().st_uid
    except OSError:
        pass
    return out


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    with (
        database(args.database, args.pg_url) as url_a,
        database(args.database, args.pg_url) as url_b,
        fabriek_server(
            database_url=url_a, cpus=args.cpus, extra_env={"FABRIEK_SANDBOX": "1"}
        ) as boxed,
        fabriek_server(
            database_url=url_b, cpus=args.cpus, extra_env={"FABRIEK_SANDBOX": "0"}
        ) as plain,
    ):
        servers = {"sandboxed": boxed, "plain": plain}
        clients = {
            mode: httpx.Client(base_url=s.api, headers=s.headers, timeout=60)
            for mode, s in servers.items()
        }
        try:
            for w in range(5 if args.jobs >= 20 else 1):
                for mode in MODES:
                    launch_one(servers[mode], clients[mode], -1 - w, args.job_timeout)
            print(f"launch latency: {args.jobs} jobs a mode, alternating ...", flush=True)
            wait_for_quiet(args.wait_quiet, boxed.proc.pid, plain.proc.pid)
            monitor = CpuMonitor(boxed.proc.pid, plain.proc.pid)
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            deadline = time.monotonic() + args.max_seconds
            began = time.perf_counter()
            for i in range(args.jobs):
                if time.monotonic() > deadline:
                    break
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    one = launch_one(servers[mode], clients[mode], i, args.job_timeout)
                    runs[mode].append(one)
            seconds = time.perf_counter() - began
            cpu = monitor.stop()
        finally:
            for client in clients.values():
                client.close()
    return _latency_result(runs, seconds, cpu, args)


def _latency_result(
    runs: dict[str, list[dict[str, Any]]],
    seconds: float,
    cpu: dict[str, float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    problems = []
    for mode, jobs in runs.items():
        bad = [r for r in jobs if r["state"] != "succeeded" or "command_s" not in r]
        problems += [f"{mode} job {r['id']} ended {r['state']}: {r['reason']}" for r in bad[:5]]
        if bad:
            problems.append(f"{len(bad)} of {len(jobs)} {mode} jobs did not succeed")
        wrong = [r for r in jobs if r.get("sandbox_plan") != (mode == "sandboxed")]
        if wrong:
            problems.append(f"{len(wrong)} {mode} jobs were not {mode}")
    uids = sorted({r["log_uid"] for r in runs["sandboxed"] if "log_uid" in r})
    if any(uid == 0 for uid in uids):
        problems.append("a sandboxed job's logs belong to root: it did not run as its project")
    per_mode = {
        mode: {
            moment: summary_ms([r[f"{moment}_s"] for r in jobs if f"{moment}_s" in r])
            for moment in (*MOMENTS, "admit", "until_final")
        }
        | {
            # from the supervisor's stamp (before it starts the job) to the later moments: the
            # launch itself, without the API and the controller
            f"{moment}_after_recorded": summary_ms(
                [
                    r[f"{moment}_s"] - r["recorded_s"]
                    for r in jobs
                    if {f"{moment}_s", "recorded_s"} <= r.keys()
                ]
            )
            for moment in ("running", "command")
        }
        for mode, jobs in runs.items()
    }
    pairs = list(zip(runs["sandboxed"], runs["plain"], strict=True))
    added = {}
    for moment in MOMENTS:
        boxed, plain = per_mode["sandboxed"][moment], per_mode["plain"][moment]
        diffs = [
            (b[f"{moment}_s"] - p[f"{moment}_s"]) * 1000
            for b, p in pairs
            if f"{moment}_s" in b and f"{moment}_s" in p
        ]
        added[moment] = {
            "p50_ms": boxed.get("p50_ms", float("nan")) - plain.get("p50_ms", float("nan")),
            "p99_ms": boxed.get("p99_ms", float("nan")) - plain.get("p99_ms", float("nan")),
            "median_pair_difference_ms": statistics.median(diffs) if diffs else float("nan"),
        }
    goals = {
        moment: {
            "added_p50": added[moment]["p50_ms"] <= GOAL_ADDED_P50_MS,
            "p50": per_mode["sandboxed"][moment].get("p50_ms", float("inf")) <= GOAL_P50_MS,
        }
        for moment in MOMENTS
    }
    return {
        "database": args.database,
        "jobs_per_mode": len(runs["sandboxed"]),
        "seconds": seconds,
        "latency": per_mode,
        "added_by_sandbox": added,
        "goals_met": goals,
        "sandboxed_uids": uids,
        "cpu_cores": cpu,
        "problems": problems,
    }


# --- 3. a job's own speed ---------------------------------------------------------------------
def calibrate(body: Callable[[int, int], str], seconds: float, size: int) -> int:
    """The `n` that makes `body` take about `seconds` of CPU here (run in this process; CPU
    time, as other load on the machine stretches the wall time)."""
    n = 1
    while True:
        began = time.process_time()
        exec(body(n, size), {})
        took = time.process_time() - began
        if took > 0.3:
            return max(1, round(n * seconds / took))
        n *= 4


def run_job(backend: LocalBackend, job_id: int, code: str, memory_bytes: int) -> dict[str, Any]:
    spec = LaunchSpec(
        job_id=job_id,
        name="speed",
        argv=[sys.executable, "-I", "-c", code],
        env={},
        resources=Resources(1, memory_bytes),
        gpu_ids=(),
        time_limit_s=3600,
        workdir_archive=None,
        instance=str(job_id),
        identity=IDENTITY,
    )
    handle = backend.submit(spec)
    seen: Observation
    while True:
        seen = backend.poll({job_id: handle})[job_id]
        if seen.phase in (Phase.FINISHED, Phase.LOST):
            break
        time.sleep(0.05)
    log = backend.log_path(job_id, handle)
    printed = log.read_text().strip() if log and log.exists() else ""
    if seen.outcome is None or seen.outcome.value != "succeeded" or not printed:
        raise RuntimeError(f"speed job {job_id} ended {seen.outcome}: {seen.reason} {printed!r}")
    own: dict[str, Any] = json.loads(printed.splitlines()[-1])
    return own


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    size = args.mem_mib * 2**20
    jobs = {
        kind: START + body(calibrate(body, args.work, size), size) + REPORT
        for kind, body in BODIES.items()
    }
    memory_bytes = 2 * size + 2**30  # two buffers and the interpreter, with room to spare
    home = Path(tempfile.mkdtemp(prefix="fabriek-isolation-speed-"))
    backends = {
        mode: LocalBackend(
            jobs_dir=home / mode / "jobs",
            resources=Resources(2, 8 * 2**30),
            gpus=[],
            kill_grace_seconds=1,
            sandbox=mode == "sandboxed",
        )
        for mode in MODES
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {mode: [] for mode in MODES} for kind in jobs
    }
    problems = []
    try:
        isolation = backends["sandboxed"].isolation
        if not isolation.complete:
            problems.append(f"the sandbox is not complete: {isolation.describe()}")
        print(f"job speed: {args.pairs} pairs of each job, alternating ...", flush=True)
        wait_for_quiet(args.wait_quiet)
        monitor = CpuMonitor()
        job_id = 0
        for pair in range(args.pairs):
            for kind, code in jobs.items():
                for mode in MODES if pair % 2 == 0 else MODES[::-1]:
                    job_id += 1
                    own = run_job(backends[mode], job_id, code, memory_bytes)
                    runs[kind][mode].append(own)
                    print(
                        f"pair {pair + 1} {kind:6} {mode:9} wall {own['wall_s']:.3f}s "
                        f"cpu {own['cpu_s']:.3f}s uid {own['uid']}",
                        flush=True,
                    )
        cpu = monitor.stop()
    finally:
        for backend in backends.values():
            backend.launcher.close()
            kill_job_processes(backend.jobs_dir)
        shutil.rmtree(home, ignore_errors=True)
    for kind in jobs:
        ran_as = {r["uid"] for r in runs[kind]["sandboxed"]}
        if ran_as != {IDENTITY.uid}:
            problems.append(f"sandboxed {kind} jobs ran as uid {sorted(ran_as)}")
    return {
        "work_s": args.work,
        "mem_mib": args.mem_mib,
        "pairs": args.pairs,
        "sandbox": isolation.describe(),
        "kinds": {kind: _ratios(runs[kind]) for kind in jobs},
        "cpu_cores": cpu,
        "problems": problems,
    }


def _ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def ratios(key: str) -> list[float]:
        return [b[key] / p[key] for b, p in zip(runs["sandboxed"], runs["plain"], strict=True)]

    wall, cpu = ratios("wall_s"), ratios("cpu_s")
    return {
        "median_wall_s": {m: statistics.median(r["wall_s"] for r in runs[m]) for m in MODES},
        "median_cpu_s": {m: statistics.median(r["cpu_s"] for r in runs[m]) for m in MODES},
        "median_pair_wall_ratio": statistics.median(wall),
        "median_pair_cpu_ratio": statistics.median(cpu),
        "pair_wall_ratios": wall,
        "pair_cpu_ratios": cpu,
        "meets_goal": statistics.median(wall) <= GOAL_RATIO,
        "runs": runs,
    }


# --- report -----------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(base: dict[str, Any], latency: dict[str, Any], speed: dict[str, Any]) -> None:
    print()
    if base:
        print(
            table(
                ["baseline", "runs", "p50 ms", "p99 ms", "mean ms"],
                [[k, v["n"], v["p50_ms"], v["p99_ms"], v["mean_ms"]] for k, v in base.items()],
            )
        )
        print()
    rows = []
    for moment in MOMENTS:
        for mode in MODES:
            lat = latency["latency"][mode][moment]
            rows.append(
                [
                    moment,
                    mode,
                    lat.get("n", 0),
                    lat.get("p50_ms"),
                    lat.get("p99_ms"),
                    lat.get("max_ms"),
                    "",
                ]
            )
        added = latency["added_by_sandbox"][moment]
        goals = latency["goals_met"][moment]
        rows.append(
            [
                moment,
                "added by the sandbox",
                "",
                added["p50_ms"],
                added["p99_ms"],
                "",
                f"pair median {added['median_pair_difference_ms']:.1f} ms; goals: added "
                f"{_met(goals['added_p50'])}, p50 {_met(goals['p50'])}",
            ]
        )
    print(table(["submit ->", "mode", "jobs", "p50 ms", "p99 ms", "max ms", ""], rows))
    print()
    rows = [
        [f"stamp -> {moment}", mode, lat["p50_ms"], lat["p99_ms"]]
        for moment in ("running", "command")
        for mode in MODES
        if (lat := latency["latency"][mode][f"{moment}_after_recorded"]).get("n")
    ]
    print(table(["the launch itself", "mode", "p50 ms", "p99 ms"], rows))
    print()
    rows = []
    for kind, r in speed["kinds"].items():
        rows.append(
            [
                kind,
                r["median_wall_s"]["plain"],
                r["median_wall_s"]["sandboxed"],
                f"{r['median_pair_wall_ratio']:.4f}",
                f"{r['median_pair_cpu_ratio']:.4f}",
                _met(r["meets_goal"]),
            ]
        )
    print(
        table(
            ["job", "plain s", "sandboxed s", "median ratio wall", "median ratio CPU", "goal"],
            rows,
        )
    )
    for kind, r in speed["kinds"].items():
        print(f"{kind} per pair (wall):", ", ".join(f"{x:.3f}" for x in r["pair_wall_ratios"]))
    for name, part in (("launch latency", latency), ("job speed", speed)):
        print(f"{name}: {describe_cpu(part['cpu_cores'])}")
        uses_pg = name == "launch latency" and latency["database"] == "postgres"
        if foreign_load(part["cpu_cores"], uses_postgres=uses_pg) > NOISY:
            print(f"{name}: WARNING: other load on the machine during the run")
        for problem in part["problems"]:
            print(f"{name}: PROBLEM: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000, help="measured launches per mode")
    parser.add_argument("--pairs", type=int, default=10, help="sandboxed/plain pairs per job kind")
    parser.add_argument("--work", type=float, default=2.0, help="seconds of work per speed job")
    parser.add_argument("--mem-mib", type=int, default=256, help="buffer size of the memory job")
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server, no database")
    parser.add_argument("--cpus", type=int, default=64, help="FABRIEK_CPUS of the servers")
    parser.add_argument("--baseline-runs", type=int, default=100, help="runs of each baseline")
    parser.add_argument("--job-timeout", type=float, default=30, help="longest wait for one job")
    parser.add_argument("--max-seconds", type=float, default=420, help="stop launching after")
    parser.add_argument("--quick", action="store_true", help="50 jobs, 2 pairs of 0.5 s jobs")
    common_options(parser)
    args = parser.parse_args()
    exit_on_sigterm()
    if os.geteuid() != 0:
        raise SystemExit("run as root: sandboxed jobs run as uid 200001")
    if args.quick:
        args.jobs, args.pairs, args.work, args.baseline_runs = 50, 2, 0.5, 30
    host = machine()
    print(describe(host), flush=True)
    wait_for_quiet(args.wait_quiet)
    monitor = CpuMonitor()
    base, why = bwrap_baseline(args.baseline_runs)
    base_cpu = monitor.stop()
    if why:
        raise SystemExit(f"no sandbox on this machine: {why}")
    latency = bench_latency(args)
    speed = bench_speed(args)
    report(base, latency, speed)
    write_json(
        args.json,
        {
            "benchmark": "isolation",
            "machine": host,
            "args": vars(args),
            "goals": {
                "added_p50_ms": GOAL_ADDED_P50_MS,
                "p50_ms": GOAL_P50_MS,
                "ratio": GOAL_RATIO,
            },
            "baselines": base,
            "baselines_cpu_cores": base_cpu,
            "launch": latency,
            "speed": speed,
        },
    )


if __name__ == "__main__":
    main()
