"""Carbon saved by green scheduling on the real Dutch grid series, through the real engine.

Goal (issue): with the Dutch 2021-2023 hourly series, for 4, 8, 12 and 24 hours of slack, the
carbon saved against starting at once is within 80 % of the perfect-foresight optimum of each job
alone, under realistic load, with no deadline missed. (Reference: for a 1-hour job that bound was
measured at about 11, 20, 27 and 37 %.)

How it measures (in process; pure code, a small discrete-event replay):

1. Read the series (`--series`, default the Dutch 2021-2023 series shipped with fabriek,
   src/fabriek/data/grid; life-cycle intensity).
2. Workload, seeded: `--weeks` weeks spread evenly over the three years; in each, 1-GPU jobs of
   `--hours` hours arrive as a Poisson stream at `--load` of a machine of `--gpus` GPUs (8 per
   node). A share of them (`--flexible-share`, 30 %) may start up to SLACK hours late (deadline =
   arrival + slack + length); the rest start as soon as they can.
3. Replay each slack through `fabriek.scheduling.engine.decide()`, the function the controller
   calls: a cycle at every arrival, every end and every hour boundary; admitted jobs run exactly
   their length. The forecast is (a) the real series (perfect foresight, an upper bound, as in the
   simulator) and (b) seasonal naive: each hour's value one week earlier, what the live
   controller uses without operator forecasts. Also replayed with no slack (the baseline's
   queueing at this load).
4. Per job, carbon = energy (1 kW per GPU) x the intensity of each hour it ran. Reported against
   starting at once (at arrival, no queue) and against each job's own perfect-foresight optimum
   within its slack (alone, no capacity limit): saved %, bound %, saved / bound, deadlines missed,
   mean wait.

    python benchmarks/green_deferral.py                  # 12 weeks, 64 GPUs at 70 % load
    python benchmarks/green_deferral.py --quick          # 2 weeks, 16 GPUs
    python benchmarks/green_deferral.py --stress         # also with every job flexible
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import common_options, describe, machine, table, write_json

from fabriek import data
from fabriek.core.green import parse_intensity_csv
from fabriek.scheduling.engine import decide
from fabriek.scheduling.model import (
    Node,
    Partition,
    PendingJob,
    Pool,
    Request,
    RunningJob,
    Snapshot,
)

SERIES = data.path("nl-grid")
SLACKS = (4, 8, 12, 24)
FORECAST_HOURS = 48


class Grid:
    def __init__(self, path: Path) -> None:
        rows = parse_intensity_csv(data.read_text(path))
        self.start = rows[0].hour.timestamp()
        self.values = [r.life_cycle for r in rows]
        assert all(v is not None for v in self.values)

    def at(self, t: float) -> float:
        return self.values[int((t - self.start) // 3600)]  # type: ignore[return-value]

    def mean(self, start: float, seconds: float) -> float:
        total, t, end = 0.0, start, start + seconds
        while t < end:
            step = min(end, t - (t - self.start) % 3600 + 3600) - t
            total += self.at(t) * step
            t += step
        return total / seconds

    def forecast(self, hour: float, *, naive: bool) -> tuple[float | None, ...]:
        first = int((hour - self.start) // 3600) - (168 if naive else 0)
        return tuple(
            self.values[i] if 0 <= i < len(self.values) else None
            for i in range(first, first + FORECAST_HOURS)
        )


def workload(
    grid: Grid, weeks: int, gpus: int, load: float, hours: float, seed: int
) -> list[float]:
    """Arrival times (unix seconds), `weeks` weeks spread over the series, Poisson at `load`."""
    rng = random.Random(seed)
    span = len(grid.values) * 3600 - 10 * 86400
    rate = load * gpus / (hours * 3600)  # jobs per second
    arrivals = []
    for w in range(weeks):
        t = grid.start + 7 * 86400 + span * w / weeks  # away from the series' first week
        t -= t % 3600
        end = t + 7 * 86400
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            arrivals.append(t)
    return arrivals


def replay(
    grid: Grid,
    arrivals: list[float],
    *,
    gpus: int,
    hours: float,
    slack_h: float,
    naive: bool,
    flexible: set[int] | None = None,
) -> dict[str, Any]:
    """Each week on its own (the machine empty at its start). Returns per-job (arrival, start)."""
    run_s = hours * 3600
    partition = Partition(
        "gpu", "h100", tuple(Node(f"n{i:03}", 8, 64, 512 * 2**30) for i in range(gpus // 8))
    )
    pools = (Pool("all", 1.0),)
    request = Request(gpus_per_node=1, cpus_per_node=1, nodes=1, time_limit_s=run_s)
    starts: dict[int, float] = {}
    cycles = 0
    cycle_time = 0.0
    pending: dict[int, PendingJob] = {}
    running: dict[int, RunningJob] = {}
    ends: list[tuple[float, int]] = []
    i = 0
    now = arrivals[0]
    while i < len(arrivals) or pending or running:
        # The next event: an arrival, an end, or the next hour (deferred jobs' windows open).
        candidates = [now - now % 3600 + 3600]
        if i < len(arrivals):
            candidates.append(arrivals[i])
        if ends:
            candidates.append(ends[0][0])
        if not pending and not running and i < len(arrivals):
            candidates = [arrivals[i]]
        now = min(candidates)
        while ends and ends[0][0] <= now:
            _, job_id = heapq.heappop(ends)
            del running[job_id]
        while i < len(arrivals) and arrivals[i] <= now:
            job_id = i
            may_wait = slack_h and (flexible is None or job_id in flexible)
            deadline = arrivals[i] + slack_h * 3600 + run_s if may_wait else None
            pending[job_id] = PendingJob(
                job_id, "p", "all", None, request, arrivals[i], deadline=deadline
            )
            i += 1
        if not pending:
            continue
        hour = now - now % 3600
        snapshot = Snapshot(
            now,
            (partition,),
            pools,
            running=tuple(running.values()),
            pending=tuple(pending.values()),
            forecast=grid.forecast(hour, naive=naive) if slack_h else (),
            forecast_start=hour,
        )
        began = time.perf_counter()
        decisions = decide(snapshot)
        cycle_time += time.perf_counter() - began
        cycles += 1
        for admission in decisions.admissions:
            job = pending.pop(admission.job_id)
            running[job.id] = RunningJob(
                job.id, "p", "all", None, request, admission.placement, now
            )
            starts[job.id] = now
            heapq.heappush(ends, (now + run_s, job.id))
        for job_id, window in decisions.deferrals.items():
            pending[job_id] = PendingJob(
                job_id, "p", "all", None, request, pending[job_id].submitted_at,
                deadline=pending[job_id].deadline, green_start=window.start,
            )  # fmt: skip
    return {"starts": starts, "cycles": cycles, "cycle_s": cycle_time}


def optimum(grid: Grid, arrival: float, slack_h: float, run_s: float) -> float:
    """The lowest mean intensity of a run starting within the slack (now or on an hour)."""
    best = grid.mean(arrival, run_s)
    t = arrival - arrival % 3600 + 3600
    while t <= arrival + slack_h * 3600:
        best = min(best, grid.mean(t, run_s))
        t += 3600
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--load", type=float, default=0.7, help="offered load, 0-1")
    parser.add_argument("--hours", type=float, default=1.0, help="each job's length")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument(
        "--flexible-share",
        type=float,
        default=0.3,
        help="the share of jobs that declare a deadline (the rest start as soon as they can)",
    )
    parser.add_argument("--quick", action="store_true", help="2 weeks on 16 GPUs")
    parser.add_argument("--stress", action="store_true", help="also replay with every job flexible")
    common_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.weeks, args.gpus = 2, 16
    if not args.series.exists():
        raise SystemExit(f"no carbon series at {args.series} (give --series)")
    info = machine()
    print(describe(info), flush=True)
    grid = Grid(args.series)
    arrivals = workload(grid, args.weeks, args.gpus, args.load, args.hours, args.seed)
    run_s = args.hours * 3600
    print(f"{len(arrivals):,} jobs over {args.weeks} weeks, {args.gpus} GPUs, load {args.load:.0%}")
    at_once = [grid.mean(a, run_s) for a in arrivals]
    results: list[dict[str, Any]] = []
    baseline = replay(grid, arrivals, gpus=args.gpus, hours=args.hours, slack_h=0, naive=False)
    base_carbon = sum(grid.mean(baseline["starts"][j], run_s) for j in range(len(arrivals)))
    base_wait = statistics.mean(baseline["starts"][j] - a for j, a in enumerate(arrivals))
    print(
        f"no slack: saved {1 - base_carbon / sum(at_once):.1%} (queueing alone), mean wait "
        f"{base_wait / 60:.1f} min, {baseline['cycles']:,} cycles",
        flush=True,
    )
    rng = random.Random(args.seed + 1)
    shares = sorted({args.flexible_share, 1.0} if args.stress else {args.flexible_share})
    for share in shares:
        flexible = {j for j in range(len(arrivals)) if rng.random() < share} if share < 1 else None
        chosen = list(flexible) if flexible is not None else list(range(len(arrivals)))
        rigid = [j for j in range(len(arrivals)) if flexible is not None and j not in flexible]
        base_rigid_wait = (
            statistics.mean(baseline["starts"][j] - arrivals[j] for j in rigid) / 60
            if rigid
            else 0.0
        )
        for slack in SLACKS:
            best = {j: optimum(grid, arrivals[j], slack, run_s) for j in chosen}
            once = sum(at_once[j] for j in chosen)
            bound = 1 - sum(best.values()) / once
            for naive in (False, True):
                began = time.perf_counter()
                out = replay(
                    grid, arrivals, gpus=args.gpus, hours=args.hours, slack_h=slack, naive=naive,
                    flexible=flexible,
                )  # fmt: skip
                took = time.perf_counter() - began
                starts = out["starts"]
                carbon = sum(grid.mean(starts[j], run_s) for j in chosen)
                missed = sum(1 for j in chosen if starts[j] > arrivals[j] + slack * 3600 + 1e-6)
                saved = 1 - carbon / once
                row = {
                    "flexible_share": share,
                    "slack_h": slack,
                    "forecast": "seasonal naive (a week before)"
                    if naive
                    else "perfect (the series)",
                    "saved": saved,
                    "bound": bound,
                    "saved_of_bound": saved / bound if bound else math.nan,
                    "deadlines_missed": missed,
                    "flexible_mean_wait_min": statistics.mean(
                        starts[j] - arrivals[j] for j in chosen
                    )
                    / 60,
                    "rigid_mean_wait_min": statistics.mean(starts[j] - arrivals[j] for j in rigid)
                    / 60
                    if rigid
                    else None,
                    "rigid_mean_wait_min_without_deferral": base_rigid_wait if rigid else None,
                    "cycles": out["cycles"],
                    "mean_cycle_ms": out["cycle_s"] / max(out["cycles"], 1) * 1000,
                    "replay_s": took,
                }
                results.append(row)
                print(
                    f"{share:.0%} flexible, slack {slack:>2} h, {row['forecast']}: saved {saved:.1%} "
                    f"of bound {bound:.1%} ({row['saved_of_bound']:.0%}), missed {missed} "
                    f"({took:.1f} s)",
                    flush=True,
                )
    print()
    print(
        table(
            [
                "flexible",
                "slack h",
                "forecast",
                "saved",
                "bound",
                "saved/bound",
                "missed",
                "flexible wait min",
                "others' wait min (without deferral)",
            ],
            [
                [
                    f"{r['flexible_share']:.0%}",
                    r["slack_h"],
                    r["forecast"],
                    f"{r['saved']:.1%}",
                    f"{r['bound']:.1%}",
                    f"{r['saved_of_bound']:.0%}",
                    r["deadlines_missed"],
                    f"{r['flexible_mean_wait_min']:.0f}",
                    "-"
                    if r["rigid_mean_wait_min"] is None
                    else f"{r['rigid_mean_wait_min']:.1f} ({r['rigid_mean_wait_min_without_deferral']:.1f})",
                ]
                for r in results
            ],
        )
    )
    write_json(
        args.json,
        {
            "benchmark": "green_deferral",
            "machine": info,
            "series": str(args.series),
            "first_hour": datetime.fromtimestamp(grid.start, UTC).isoformat(),
            "jobs": len(arrivals),
            "weeks": args.weeks,
            "gpus": args.gpus,
            "load": args.load,
            "job_hours": args.hours,
            "flexible_share": args.flexible_share,
            "no_slack": {"saved": 1 - base_carbon / sum(at_once), "mean_wait_min": base_wait / 60},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
