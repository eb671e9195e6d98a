"""The simulator: how fast it replays, and how fabriek's engine compares with the baselines.

Goals (issue 6):
- speed: all 82,246 jobs of the Philly file and all of ITP cluster04, per policy: at least 20,000
  simulated jobs per second on 2 cores;
- quality: ITP cluster04 and Philly at loads 0.6, 0.8, 1.0, 1.2 (the machine sized so that the
  trace offers that load), every policy side by side, 3 seeds: fabriek at least matches EASY on
  mean JCT and utilisation while keeping every pool's guarantee, and beats FIFO + EASY clearly on
  p99 queueing delay of small (1-GPU) jobs.

How it measures: `fabriek.sim.run.run_study`, in process, the same code as `fabriek simulate`
(docs/simulator.md). Speed is jobs / wall time of each policy's replay (reading and building the
workload not included), each policy on the trace at load 0.8. Quality replays every
(trace, load, seed) with every policy and reports the metrics the goal names.

    python benchmarks/simulate.py --speed                  # both traces, every policy, once
    python benchmarks/simulate.py --quality                # 2 traces x 4 loads x 3 seeds
    python benchmarks/simulate.py --quality --quick        # ITP cluster04 only, 1 seed
    python benchmarks/simulate.py --quality --traces philly --seeds 1   # a part of the grid
    python benchmarks/simulate.py --green --traces itp-cluster04   # carbon saved by deferral
    python benchmarks/simulate.py --quality --policies fabriek      # the engine alone, after a change
    python benchmarks/simulate.py --quality --workers 2    # studies side by side, one per core
    python benchmarks/simulate.py --table results/a.json results/b.json   # one table of both
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _harness import code_version, common_options, describe, machine, table, write_json

from fabriek import data
from fabriek.sim.parallel import Send, side_by_side
from fabriek.sim.policies import POLICIES
from fabriek.sim.run import Study, run_study

# The traces shipped with fabriek (src/fabriek/data): every ITP cluster and the Philly sample.
SETS = {
    **{f"itp-cluster{n:02d}": (data.path(f"itp/cluster{n:02d}"), "itp") for n in range(1, 8)},
    "philly": (data.path("philly"), "philly"),
}
DEFAULT_SETS = ("itp-cluster04", "philly")
LOADS = (0.6, 0.8, 1.0, 1.2)


def speed(names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        path, kind = SETS[name]
        result = run_study(Study(trace=path, kind=kind, policies=POLICIES, load=0.8))
        for p in result["policies"]:
            rows.append({"trace": name, "policy": p["policy"], "jobs": p["jobs"],
                         "seconds": p["replay_s"], "jobs_per_s": p["jobs_per_s"],
                         "decisions": p["decisions"]})  # fmt: skip
            print(f"{name} {p['policy']}: {p['jobs']} jobs in {p['replay_s']:.1f}s "
                  f"= {p['jobs_per_s']:,.0f} jobs/s", flush=True)  # fmt: skip
    return rows


def quality(
    names: list[str],
    seeds: list[int],
    loads: tuple[float, ...] = LOADS,
    max_jobs: int | None = None,
    policies: tuple[str, ...] = POLICIES,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Every (trace, load, seed) study, `workers` of them at once, each in its own process."""
    tasks = [(name, load, seed, max_jobs, policies)
             for name in names for load in loads for seed in seeds]  # fmt: skip
    if workers <= 1:
        studies = [_study_rows(*task) for task in tasks]
    else:
        studies = side_by_side(_study_rows, tasks, workers)
    return [row for rows in studies for row in rows]


def _study_rows(
    name: str,
    load: float,
    seed: int,
    max_jobs: int | None,
    policies: tuple[str, ...],
    _send: Send | None = None,
) -> list[dict[str, Any]]:
    path, kind = SETS[name]
    result = run_study(Study(trace=path, kind=kind, policies=policies, load=load, seed=seed,
                             max_jobs=max_jobs))  # fmt: skip
    rows = []
    for p in result["policies"]:
        met = [v["guarantee_met_while_waiting"] for v in p["pools"].values()]
        rows.append({
            "trace": name, "load": load, "seed": seed, "policy": p["policy"],
            "gpus": result["machine"]["gpus"],
            "jct_mean_h": p["jct_s"]["mean"] / 3600,
            "jct_p99_h": p["jct_s"]["p99"] / 3600,
            "utilisation": p["utilisation"],
            "utilisation_arriving": p["utilisation_while_arriving"],
            "jain": p["tenant_slowdown_jain"],
            "small_wait_p99_min": p["small_jobs_wait_s"]["p99"] / 60,
            "guarantee_met_min": min((m for m in met if m is not None), default=None),
            "preemptions": p["preemptions"],
            "lost_gpu_hours": p["lost_gpu_hours"],
        })  # fmt: skip
    print(f"{name} load {load} seed {seed}: done", flush=True)
    return rows


GRID = data.path("nl-grid")
SLACKS_H = (4, 12, 24)


def green(names: list[str], max_jobs: int) -> list[dict[str, Any]]:
    """Carbon saved by deferral: a share of 0.3 flexible, at load 0.8, per slack and with
    over-requested and exact limits (the engine plans with limits)."""
    rows = []
    for name in names:
        path, kind = SETS[name]
        for exact in (False, True):
            for slack in SLACKS_H:
                study = Study(trace=path, kind=kind, policies=("fabriek",), load=0.8,
                              max_jobs=max_jobs, carbon_series=GRID, flexible=0.3,
                              slack_s=slack * 3600.0, exact_limits=exact)  # fmt: skip
                [p] = run_study(study)["policies"]
                g, f = p["green"], p["flexible"]
                rows.append({"trace": name, "jobs": p["jobs"], "limits": "exact" if exact else "over-requested",
                             "slack_h": slack, "flexible": f["jobs"], "deferred": f["deferred"],
                             "missed": f["deadlines_missed"],
                             "missed_plain": g["deadlines_missed_without_deferral"],
                             "t_co2e": g["t_co2e"],
                             "saved_t": g["saved_t_co2e"], "saved_share": g["saved_share"],
                             "flexible_saved_share": g["flexible_saved_share"],
                             "deferred_at_submit": g["deferred_g_per_kwh_at_submit"],
                             "deferred_as_run": g["deferred_g_per_kwh_as_run"]})  # fmt: skip
                print(f"{name} {rows[-1]['limits']} slack {slack} h: done", flush=True)
    return rows


def quality_table(rows: list[dict[str, Any]]) -> str:
    out = []
    keys = sorted({(r["trace"], r["load"], r["policy"]) for r in rows},
                  key=lambda k: (k[0], k[1], POLICIES.index(k[2])))  # fmt: skip
    for trace, load, policy in keys:
        mine = [r for r in rows if (r["trace"], r["load"], r["policy"]) == (trace, load, policy)]

        def mean(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return statistics.fmean(r[key] for r in rows if r[key] is not None)

        out.append([trace, load, policy, f"{mean('jct_mean_h'):.2f}", f"{mean('jct_p99_h'):.1f}",
                    f"{mean('utilisation'):.1%}", f"{mean('utilisation_arriving'):.1%}",
                    f"{mean('small_wait_p99_min'):.0f}", f"{mean('jain'):.2f}",
                    f"{min(r['guarantee_met_min'] or 0 for r in mine):.0%}",
                    f"{mean('preemptions'):.0f}"])  # fmt: skip
    return table(
        ["trace", "load", "policy", "JCT mean h", "JCT p99 h", "util", "util arriving",
         "1-GPU wait p99 min", "tenant Jain", "worst pool guarantee met", "preempted"],
        out,
    )  # fmt: skip


def merged(paths: list[str]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, float, int, str], dict[str, Any]] = {}
    for path in paths:
        info = json.loads(Path(path).read_text())
        for row in info["quality"]:
            rows[(row["trace"], row["load"], row["seed"], row["policy"])] = row
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--quick", action="store_true", help="ITP cluster04 only, one seed")
    parser.add_argument(
        "--traces", default=",".join(DEFAULT_SETS), help="comma-separated: " + ", ".join(SETS)
    )
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (quality)")
    parser.add_argument("--loads", default=",".join(map(str, LOADS)), help="comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated "
                        "(quality): e.g. fabriek alone after a change to the engine")  # fmt: skip
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the quality table of "
                        "earlier runs' JSON files, merged (a later file's row replaces an earlier "
                        "one of the same trace, load, seed and policy)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="(quality) studies replayed "
                        "at once, each in its own process; the rows are the same")  # fmt: skip
    parser.add_argument("--green", action="store_true", help="carbon saved by deferral")
    parser.add_argument("--max-jobs", type=int, help="the first N jobs of each trace only "
                        "(--green: 4000 unless given)")  # fmt: skip
    common_options(parser)
    args = parser.parse_args()
    if args.table:
        print(quality_table(merged(args.table)))
        return
    names = ["itp-cluster04"] if args.quick else args.traces.split(",")
    if unknown := set(names) - set(SETS):
        parser.error(f"unknown trace {', '.join(sorted(unknown))}")
    info: dict[str, Any] = {"machine": machine(), "code": code_version()}
    print(describe(info["machine"]))
    if args.green:
        info["green"] = green(names, args.max_jobs or 4000)
        print(table(["trace", "jobs", "limits", "slack h", "flexible", "deferred", "missed",
                     "missed without deferral", "t CO2e", "saved t", "saved of all", "saved of flexible",
                     "deferred g/kWh at once", "as run"],
                    [[r["trace"], r["jobs"], r["limits"], r["slack_h"], r["flexible"], r["deferred"],
                      r["missed"], r["missed_plain"], f"{r['t_co2e']:.1f}", f"{r['saved_t']:.2f}",
                      f"{r['saved_share']:.1%}", f"{r['flexible_saved_share']:.1%}",
                      f"{r['deferred_at_submit']:.0f}", f"{r['deferred_as_run']:.0f}"]
                     for r in info["green"]]))  # fmt: skip
    if args.speed or not (args.quality or args.green):
        info["speed"] = speed(names)
        print(table(["trace", "policy", "jobs", "s", "jobs/s"],
                    [[r["trace"], r["policy"], r["jobs"], f"{r['seconds']:.1f}",
                      f"{r['jobs_per_s']:,.0f}"] for r in info["speed"]]))  # fmt: skip
    if args.quality:
        seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
        loads = tuple(float(x) for x in args.loads.split(","))
        policies = tuple(args.policies.split(","))
        if unknown := set(policies) - set(POLICIES):
            parser.error(f"unknown policy {', '.join(sorted(unknown))}")
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        info["quality"] = quality(names, seeds, loads, args.max_jobs, policies, args.workers)
        print(quality_table(info["quality"]))
    write_json(args.json, info)


if __name__ == "__main__":
    main()
