"""Energy metering's cost to the job: the same CPU-bound job with and without metering.

Goal (issue): metered, the job is at most 1 % slower.

How it measures, in process with the real local backend (no HTTP server, no database):

1. Calibrate a pure-Python loop to take about `--work` seconds of CPU on this machine.
2. `--pairs` times, launch the job once with metering and once without (order alternating, one
   job at a time), and read its wall time and CPU time from the supervisor's result. Metered runs
   sample every `--sample-every` seconds (15 s in production; a smaller value is a harsher test).
3. Report the median of the pairs' ratios metered / unmetered of the wall time (what a user
   waits) and of the job's own CPU time, with every pair's ratio.
4. The meter's own cost, measured directly (a noisy VM cannot show 1 % between two runs of a
   job, but it can time a sample): the CPU time of `JobMeter.sample()` over `--samples` calls on
   a live process group, and of starting a meter (the import in a fresh interpreter, then
   `job_meter()`); divided by the sampling interval this is the fraction of a core metering
   takes while a job runs.

The baseline is the unmetered job in the same run: absolute times on a shared machine drift.

    python benchmarks/metering_overhead.py                     # 5 pairs of 20 s jobs
    python benchmarks/metering_overhead.py --quick             # 2 pairs of 3 s jobs
    python benchmarks/metering_overhead.py --sample-every 1 --json out.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import common_options, describe, machine, table, write_json

from fabriek.backends.base import LaunchSpec, Observation, Phase
from fabriek.backends.local.backend import LocalBackend
from fabriek.core.jobs import Resources

LOOP = "n = {n}\nx = 0\nfor i in range(n):\n    x += i * i\n"


def calibrate(seconds: float) -> int:
    """Iterations of LOOP that take about `seconds` of CPU here."""
    n = 200_000
    while True:
        began = time.process_time()
        exec(LOOP.format(n=n), {})
        took = time.process_time() - began
        if took > 0.2:
            return int(n * seconds / took)
        n *= 4


def run_job(backend: LocalBackend, job_id: int, n: int) -> Observation:
    spec = LaunchSpec(
        job_id=job_id,
        name="burn",
        argv=[sys.executable, "-c", LOOP.format(n=n)],
        env={},
        resources=Resources(1, 2**30),
        gpu_ids=(),
        time_limit_s=3600,
        workdir_archive=None,
        instance=str(job_id),
    )
    handle = backend.submit(spec)
    while True:
        seen = backend.poll({job_id: handle})[job_id]
        if seen.phase in (Phase.FINISHED, Phase.LOST):
            return seen
        time.sleep(0.05)


def sample_cost(samples: int, home: Path) -> dict[str, float]:
    """CPU seconds of one sample and of starting a meter, on a live (sleeping) process group."""
    import subprocess

    from fabriek.metering.meter import job_meter

    child = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        began = time.process_time()
        meter = job_meter(
            home, pgid=child.pid, gpu_indices=(), gpu_source="estimate", memory_bytes=2**30
        )
        start_s = time.process_time() - began
        meter.every = 0.0  # sample on every call
        began = time.process_time()
        for _ in range(samples):
            meter._next = 0.0
            meter.sample()
        per_sample = (time.process_time() - began) / samples
    finally:
        child.kill()
        child.wait()
    code = "import time; t = time.process_time(); import fabriek.metering.meter; print(time.process_time() - t)"
    imported = float(
        subprocess.check_output(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                "import sys; sys.path[:0] = " + repr(sys.path) + "; " + code,
            ]
        )
    )
    return {"start_s": start_s, "import_s": imported, "per_sample_s": per_sample}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=float, default=10.0, help="seconds of CPU per job")
    parser.add_argument("--pairs", type=int, default=10, help="metered/unmetered pairs")
    parser.add_argument("--sample-every", type=float, default=15.0, help="metering interval (s)")
    parser.add_argument("--samples", type=int, default=500, help="samples timed directly")
    parser.add_argument("--quick", action="store_true", help="2 pairs of 3 s jobs")
    common_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.work, args.pairs = 3.0, 2
    info = machine()
    print(describe(info), flush=True)
    n = calibrate(args.work)
    home = Path(tempfile.mkdtemp(prefix="fabriek-metering-"))
    backends = {
        metered: LocalBackend(
            jobs_dir=home / ("metered" if metered else "plain"),
            resources=Resources(2, 4 * 2**30),
            gpus=[],
            kill_grace_seconds=1,
            metering=metered,
            sample_every_s=args.sample_every,
        )
        for metered in (True, False)
    }
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for pair in range(args.pairs):
            for metered in (True, False) if pair % 2 == 0 else (False, True):
                seen = run_job(backends[metered], pair * 2 + metered + 1, n)
                assert seen.usage is not None and seen.outcome is not None, seen
                assert (seen.energy is not None) == metered
                runs[metered].append((seen.usage.wall_s, seen.usage.cpu_s))
                print(
                    f"pair {pair + 1}: {'metered  ' if metered else 'unmetered'} "
                    f"wall {seen.usage.wall_s:.3f}s cpu {seen.usage.cpu_s:.3f}s",
                    flush=True,
                )
        cost = sample_cost(args.samples, home)
    finally:
        for backend in backends.values():
            backend.launcher.close()
        shutil.rmtree(home, ignore_errors=True)
    wall = {m: statistics.median(w for w, _ in runs[m]) for m in runs}
    cpu = {m: statistics.median(c for _, c in runs[m]) for m in runs}
    pair_ratios = [m[0] / u[0] for m, u in zip(runs[True], runs[False], strict=True)]
    cpu_ratios = [m[1] / u[1] for m, u in zip(runs[True], runs[False], strict=True)]
    result: dict[str, Any] = {
        "benchmark": "metering_overhead",
        "machine": info,
        "work_s": args.work,
        "pairs": args.pairs,
        "sample_every_s": args.sample_every,
        "median_wall_s": {"metered": wall[True], "unmetered": wall[False]},
        "median_cpu_s": {"metered": cpu[True], "unmetered": cpu[False]},
        "wall_ratio": wall[True] / wall[False],
        "cpu_ratio": cpu[True] / cpu[False],
        "median_pair_wall_ratio": statistics.median(pair_ratios),
        "median_pair_cpu_ratio": statistics.median(cpu_ratios),
        "pair_wall_ratios": pair_ratios,
        "pair_cpu_ratios": cpu_ratios,
        "meter_cost": cost,
        "meter_core_fraction": cost["per_sample_s"] / args.sample_every,
        "runs": {"metered": runs[True], "unmetered": runs[False]},
    }
    print()
    print(
        table(
            ["", "median wall s", "median job CPU s"],
            [
                ["unmetered", f"{wall[False]:.3f}", f"{cpu[False]:.3f}"],
                ["metered", f"{wall[True]:.3f}", f"{cpu[True]:.3f}"],
                [
                    "metered / unmetered",
                    f"{wall[True] / wall[False]:.4f}",
                    f"{cpu[True] / cpu[False]:.4f}",
                ],
            ],
        )
    )
    print("per pair (wall):", ", ".join(f"{r:.4f}" for r in pair_ratios))
    print(
        f"median of the pairs' ratios: wall {statistics.median(pair_ratios):.4f}, job CPU "
        f"{statistics.median(cpu_ratios):.4f}"
    )
    print(
        f"the meter itself: {cost['per_sample_s'] * 1000:.3f} ms CPU per sample (every "
        f"{args.sample_every:g} s: {cost['per_sample_s'] / args.sample_every:.5%} of a core), "
        f"{cost['import_s'] * 1000:.1f} ms to import and {cost['start_s'] * 1000:.2f} ms to start"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
