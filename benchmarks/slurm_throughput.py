"""fabriek on Slurm: submission overhead against raw sbatch, and one controller pass over 2,000 jobs.

Goals (issue 4): submitting 1,000 jobs through fabriek into Slurm costs at most 20 % more time than
1,000 plain `sbatch` calls, measured in the same run; one state-sync pass with 2,000 jobs known to
Slurm takes at most 1 s.

How it measures (a private Slurm cluster from fabriek.backends.slurm.devcluster; its node drained,
so that Slurm queues every job and runs none: only submission and bookkeeping are measured):

1. Submission, `--rounds` rounds (after one unmeasured warm-up round of 100 jobs), each with a
   fresh cluster and, for fabriek, a fresh server, the two halves in alternating order:
   - raw: `--jobs` sequential `sbatch --parsable` calls with the very options fabriek passes
     (partition, nodes, tasks, CPUs, memory, time, output, comment, ...), each its own batch script
     in its own directory, as a script that submits jobs one by one would;
   - fabriek: `fabriek up` (SQLite, partitions file: this Slurm partition only, sized so that the
     engine admits every job at once) and `--jobs` POST /api/v1/jobs; timed
     from the first request to the moment the last job's Slurm id is recorded (the `submitted`
     file the backend writes after sbatch answered, watched on the shared directory). The client
     is submit_throughput.py's raw HTTP/1.1 client on 4 keep-alive connections (about a tenth of
     a core), so that the time is fabriek's, not an HTTP library's.
   Ratio = fabriek's time / raw time of the same round; the median over rounds is reported.
2. State sync: a fresh cluster and server; `--sync-jobs` jobs submitted through fabriek, all
   waiting in Slurm. The server is stopped, and this process builds the same runtime and runs the
   controller's observe step (`squeue --json` once, the jobs' files, the database read) `--passes`
   times: p50 and max. For scale, also the bare `squeue --json` call and its JSON parsing.

    python benchmarks/slurm_throughput.py                      # 1,000 jobs, 5 rounds; 2,000 to sync
    python benchmarks/slurm_throughput.py --quick              # 200 jobs, 1 round; 400 to sync
    python benchmarks/slurm_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    CpuMonitor,
    code_version,
    common_options,
    describe,
    describe_cpu,
    fabriek_server,
    job_body,
    machine,
    table,
    write_json,
)
from submit_throughput import load

from fabriek.backends.base import LaunchSpec
from fabriek.backends.slurm import devcluster
from fabriek.backends.slurm.backend import SlurmBackend
from fabriek.backends.slurm.config import SlurmPartition
from fabriek.core.jobs import Resources


def cluster(root: Path) -> devcluster.DevCluster:
    c = devcluster.start(root)
    c.run("scontrol", "update", f"nodename={c.nodes[0]}", "state=drain", "reason=benchmark")
    return c


def partition(c: devcluster.DevCluster, shared: Path, jobs: int) -> SlurmPartition:
    return SlurmPartition(
        name="slurm",
        partition=c.partition,
        nodes=jobs,  # fabriek's model: room for every job, so the engine admits all at once
        cpus_per_node=1,
        memory_per_node=64 * 2**20,
        shared_dir=shared,
        slurm_conf=c.conf,
        jobcomp_file=c.jobcomp_file,
    )


def partitions_file(c: devcluster.DevCluster, shared: Path, jobs: int, path: Path) -> Path:
    path.write_text(
        "local = false\n\n[slurm.slurm]\n"
        f'partition = "{c.partition}"\nnodes = {jobs}\ncpus_per_node = 1\n'
        f'memory_per_node = "64M"\nshared_dir = "{shared}"\nslurm_conf = "{c.conf}"\n'
        f'jobcomp_file = "{c.jobcomp_file}"\n'
    )
    return path


def raw_sbatch(c: devcluster.DevCluster, root: Path, jobs: int) -> float:
    """`jobs` sequential sbatch calls with fabriek's options, each with its own script."""
    backend = SlurmBackend(partition(c, root / "raw", jobs))
    argvs = []
    for i in range(jobs):
        job_dir = root / "raw" / str(i)
        job_dir.mkdir(parents=True)
        (job_dir / "job.sh").write_text("#!/bin/sh\ntrue\n")
        spec = LaunchSpec(i, f"raw-{i}", ["true"], {}, Resources(1, 64 * 2**20), (), 3600, None)
        argvs.append(backend._sbatch_argv(spec, job_dir))
    env = {**os.environ, **c.env}
    began = time.perf_counter()
    for argv in argvs:
        subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def count_submitted(jobs_dir: Path) -> int:
    try:
        return sum(1 for d in os.scandir(jobs_dir) if os.path.exists(f"{d.path}/submitted"))
    except FileNotFoundError:
        return 0


def through_fabriek(
    c: devcluster.DevCluster, root: Path, jobs: int, *, keep: bool = False
) -> tuple[float, dict[str, float], Any]:
    shared = root / "shared"
    env = {"FABRIEK_PARTITIONS_FILE": str(partitions_file(c, shared, jobs, root / "p.toml"))}
    context = fabriek_server(database_url=None, cpus=1, extra_env=env, keep_home=keep)
    server = context.__enter__()
    try:
        monitor = CpuMonitor(server.proc.pid)
        began = time.perf_counter()
        # The lightest client (submit_throughput's raw HTTP/1.1 keep-alive client, 4 connections):
        # the time measured is fabriek's, not an HTTP library's.
        run = load(
            server,
            jobs,
            4,
            lambda i: ("POST", "/jobs", job_body(f"job-{i}", ["true"])),
            "raw",
            300,
        )
        errors = run.errors if set(run.statuses) != {201} else []
        posted = time.perf_counter() - began
        deadline = time.monotonic() + 300
        while count_submitted(shared / "jobs") < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {count_submitted(shared / 'jobs')} of {jobs} reached Slurm"
                )
            time.sleep(0.02)
        took = time.perf_counter() - began
        cpu = {**monitor.stop(), "posted_s": posted}
        if errors:
            raise RuntimeError(f"{len(errors)} submissions failed: {errors[0]}")
    except BaseException:
        context.__exit__(*sys.exc_info())
        raise
    return took, cpu, (context, server)


def state_sync(root: Path, jobs: int, passes: int) -> dict[str, Any]:
    with cluster(root / "c") as c:
        took, _, (context, server) = through_fabriek(c, root, jobs, keep=True)
        home = server.home
        env = server.env
        context.__exit__(None, None, None)  # stopped: this process runs the passes
        from fabriek.server.runtime import build_runtime
        from fabriek.settings import Settings

        old = dict(os.environ)
        os.environ.update({k: v for k, v in env.items() if k.startswith("FABRIEK_")})
        try:
            runtime = build_runtime(Settings())
        finally:
            os.environ.clear()
            os.environ.update(old)
        try:
            backend = runtime.backends["slurm"]
            assert isinstance(backend, SlurmBackend)
            squeue, parse = [], []
            for _ in range(passes):
                t0 = time.perf_counter()
                out = backend._run(["squeue", "--json"], what="squeue")
                t1 = time.perf_counter()
                known = len(json.loads(out)["jobs"])
                parse.append(time.perf_counter() - t1)
                squeue.append(t1 - t0)
            observe, whole = [], []
            for _ in range(passes):
                report = runtime.controller.run_pass()
                observe.append(report.timings["observe"])
                whole.append(
                    sum(report.timings[k] for k in ("observe", "forward_cancels", "admit"))
                )
            assert report.observed == jobs, report
        finally:
            runtime.close()
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    return {
        "jobs": jobs,
        "known_to_slurm": known,
        "observed": report.observed,
        "submit_s": took,
        "squeue_call_s": statistics.median(squeue),
        "json_parse_s": statistics.median(parse),
        "observe_p50_s": statistics.median(observe),
        "observe_max_s": max(observe),
        "pass_p50_s": statistics.median(whole),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync-jobs", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 jobs, 1 round; 400 to sync")
    common_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.rounds, args.sync_jobs = 200, 1, 400
    reason = devcluster.unavailable()
    if reason:
        raise SystemExit(f"cannot start a Slurm dev cluster here: {reason}")
    info = {"machine": machine(), "code": code_version()}
    print(describe(info["machine"]))

    def one_round(jobs: int, fabriek_first: bool) -> tuple[float, float, dict[str, float]]:
        with tempfile.TemporaryDirectory(prefix="fbs-", dir="/tmp") as tmp:
            root = Path(tmp)
            took: float = 0.0
            cpu: dict[str, float] = {}
            raw = 0.0
            for which in ("fabriek", "raw") if fabriek_first else ("raw", "fabriek"):
                if which == "raw":
                    with cluster(root / "a") as c:
                        raw = raw_sbatch(c, root / "a", jobs)
                else:
                    with cluster(root / "b") as c:
                        took, cpu, (context, _) = through_fabriek(c, root / "b", jobs)
                        context.__exit__(None, None, None)
        return raw, took, cpu

    one_round(min(100, args.jobs), False)  # warm-up, not counted: caches, first server start
    rounds = []
    for n in range(args.rounds):
        raw, took, cpu = one_round(args.jobs, fabriek_first=n % 2 == 1)
        rounds.append({"raw_s": raw, "fabriek_s": took, "ratio": took / raw, "cpu": cpu})
        print(
            f"round {n + 1}: raw sbatch {raw:.2f}s ({args.jobs / raw:.0f}/s), through fabriek "
            f"{took:.2f}s ({args.jobs / took:.0f}/s; all accepted after {cpu['posted_s']:.2f}s): "
            f"ratio {took / raw:.3f}; {describe_cpu(cpu)}"
        )
    with tempfile.TemporaryDirectory(prefix="fbs-", dir="/tmp") as tmp:
        sync = state_sync(Path(tmp), args.sync_jobs, args.passes)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print()
    print(
        table(
            ["", "value", "goal"],
            [
                ["submission: fabriek / raw sbatch (median)", f"{ratio:.3f}", "<= 1.20"],
                ["raw sbatch, jobs/s (median)", f"{statistics.median(args.jobs / r['raw_s'] for r in rounds):.0f}", ""],
                ["through fabriek, jobs/s (median)", f"{statistics.median(args.jobs / r['fabriek_s'] for r in rounds):.0f}", ""],
                [f"state sync, observe step over {sync['observed']} jobs (p50)", f"{sync['observe_p50_s'] * 1000:.0f} ms", "<= 1000 ms"],
                ["  of which squeue --json (the call)", f"{sync['squeue_call_s'] * 1000:.0f} ms", ""],
                ["  of which JSON parsing", f"{sync['json_parse_s'] * 1000:.0f} ms", ""],
                ["state sync, observe step (max)", f"{sync['observe_max_s'] * 1000:.0f} ms", ""],
                ["whole pass (observe, cancel, admit; p50)", f"{sync['pass_p50_s'] * 1000:.0f} ms", ""],
            ],
        )
    )  # fmt: skip
    write_json(
        args.json, {**info, "jobs": args.jobs, "rounds": rounds, "ratio": ratio, "sync": sync}
    )


if __name__ == "__main__":
    main()
