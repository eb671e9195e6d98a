"""Fidelity: the same small workload run for real (a fabriek server, the local backend, real
processes) and replayed in the simulator gives the same admission order, and start times within
a stated tolerance. This keeps the simulator honest as the engine changes.

The workload: 120 `sleep` jobs of 0.3, 0.6 or 0.9 s and 1, 2 or 4 GPUs (seeded), submitted as fast as the API takes them, behind a 2 s job holding the machine of 4 GPUs;
one project, no pools (the unallocated pool, guaranteed the whole machine). The simulator replays them with the submission
times fabriek recorded, and for each job the time it held its GPUs (from its admission, which is
the simulator's start, to its end: the launch takes some milliseconds of it). The tolerance is
stated per start (LAG_PER_START_S): the live controller's reaction to each end adds up.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fabriek.sim.policies import make_policy
from fabriek.sim.simulator import Machine, simulate
from fabriek.sim.workload import PoolShare, SimJob
from tests.helpers import ServerProcess, start_server, wait_for

JOBS = 120
# Each job's limit is a second longer than the one before it: no job then ends by a blocked
# head's reservation, the engine's backfill never passes a head, and the admission order is the
# queue's. (With limits that do let jobs backfill, whether one may hinges on margins that the
# live controller's reaction time, tens of milliseconds, decides one way and the simulator's
# instant reaction the other; one such decision moves every job after it. Backfill itself is
# tested on the engine, and FIFO against EASY in the simulator, apart.)
FIRST_LIMIT_S = 60
# Stated tolerance. The live controller starts a job some milliseconds after the end that makes
# room for it (a pass: tens of milliseconds on a busy machine), the simulator at once; each start
# inherits the lag of the ends before it. So a start may lag the simulator's by LAG_PER_START_S
# for each job the simulator started before it, plus SLACK_S; and none may come earlier than
# the simulator's by more than SLACK_S (the replay is the earliest the engine allows).
LAG_PER_START_S = 0.04
SLACK_S = 0.5
# Starts closer than this in the simulator count as simultaneous (jobs one decision starts: their
# live order is the order of their launches).
SAME_TIME_S = 0.05


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A machine of 4 fake GPUs (and CPUs and memory to spare: GPUs are what jobs wait for)."""
    server = start_server(
        tmp_path / "home", FABRIEK_GPUS="fake:4:test-gpu", FABRIEK_CPUS="8", FABRIEK_MEMORY="8G"
    )
    yield server
    server.stop()


def test_the_simulator_replays_what_the_factory_did(server: ServerProcess) -> None:
    rng = random.Random(6)
    # First a job that holds the machine while the others are submitted: the live controller
    # decides in passes, and would take the first submissions in a batch where the simulator
    # takes them one by one.
    shapes = [(2.0, 4)]
    shapes += [(rng.choice((0.3, 0.6, 0.9)), rng.choice((1, 1, 2, 4))) for _ in range(JOBS)]
    ids = []
    with server.http() as http:
        for i, (seconds, gpus) in enumerate(shapes):
            r = http.post(
                "/jobs",
                json={"name": f"f{i}", "argv": ["sleep", str(seconds)], "gpus": gpus,
                      "memory_bytes": 64 * 2**20, "time_limit_s": FIRST_LIMIT_S + i},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        def all_done() -> list[dict[str, object]] | None:
            jobs = [http.get(f"/jobs/{i}").json() for i in ids]
            return jobs if all(j["state"] == "succeeded" for j in jobs) else None

        live = wait_for(all_done, timeout=240, interval=1, what="the workload to run")

    def ts(job: dict[str, object], key: str) -> float:
        return datetime.fromisoformat(str(job[key])).timestamp()

    workload = [
        SimJob(k, "p", "unallocated", ts(j, "submitted_at"), ts(j, "finished_at") - ts(j, "admitted_at"),
               int(j["resources"]["gpus"]), float(j["time_limit_s"]))  # type: ignore[index]
        for k, j in enumerate(live)
    ]  # fmt: skip
    machine = Machine(1, gpus_per_node=4, cpus_per_gpu=2)
    pools = (PoolShare("unallocated", 1.0, 1),)
    outcome = simulate(workload, machine, make_policy("fabriek", machine, pools), pools=pools)
    simulated = {r.job.id: r.starts[0] for r in outcome.runs}
    real = {k: ts(j, "admitted_at") for k, j in enumerate(live)}

    # The same order: whatever the simulator starts clearly earlier also started earlier live.
    compared = [
        (a, b) for a in simulated for b in simulated if simulated[a] < simulated[b] - SAME_TIME_S
    ]
    inversions = [(a, b) for a, b in compared if real[a] > real[b]]
    t0 = min(real.values())

    def show(k: int) -> str:
        j = workload[k]
        events = [
            (round(ts(e, "at") - t0, 2), e["to_state"], e["reason"]) for e in live[k]["events"]
        ]  # type: ignore[attr-defined]
        return (f"job {k} ({j.gpus} GPUs, {j.duration:.2f}s, submitted {j.submit - t0:+.2f}s): "
                f"simulated {simulated[k] - t0:.2f}s, real {real[k] - t0:.2f}s {events}")  # fmt: skip

    assert not inversions, (
        f"{len(inversions)} of {len(compared)} pairs in another order, e.g. "
        + "; ".join(f"[{show(a)} / {show(b)}]" for a, b in inversions[:4])
    )
    lag = {k: real[k] - simulated[k] for k in simulated}
    early = [show(k) for k in lag if lag[k] < -SLACK_S]
    assert not early, f"{len(early)} live starts before the simulator's, e.g. {early[:3]}"
    rank = {k: i for i, k in enumerate(sorted(simulated, key=lambda k: (simulated[k], k)))}
    late = [show(k) for k in lag if lag[k] > SLACK_S + LAG_PER_START_S * rank[k]]
    assert not late, f"{len(late)} live starts later than the tolerance allows, e.g. {late[:3]}"
    worst = max(lag, key=lambda k: abs(lag[k]))
    print(f"fidelity: {JOBS} jobs, {len(inversions)} of {len(compared)} pairs swapped, "
          f"worst start difference {lag[worst]:.3f}s, at start {rank[worst] + 1}")  # fmt: skip
