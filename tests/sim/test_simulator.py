"""The simulator: trace readers, seeded workloads, and replays whose outcome is worked out by hand
(FIFO, EASY backfill, shortest first), plus fabriek's own engine on the same machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.sim.green import Grid, mean_intensity
from fabriek.sim.metrics import deadlines_missed, summarise
from fabriek.sim.policies import POLICIES, make_policy
from fabriek.sim.simulator import FabriekPolicy, Free, Machine, Tally, simulate
from fabriek.sim.traces import read_trace
from fabriek.sim.workload import (
    LIMIT_STEPS,
    PoolShare,
    SimJob,
    build,
    gpus_for_load,
    offered_load,
    parse_pools,
    scale_arrivals,
)

ONE_POOL = (PoolShare("all", 1.0, 1),)


def jobs(*spec: tuple[float, float, int, float]) -> list[SimJob]:
    """(submit, duration, gpus, limit) each, one pool."""
    return [SimJob(i, "p", "all", s, d, g, limit) for i, (s, d, g, limit) in enumerate(spec)]


def starts(policy: str, workload: list[SimJob], nodes: int = 1) -> dict[int, float]:
    machine = Machine(nodes)
    outcome = simulate(workload, machine, make_policy(policy, machine, ONE_POOL), pools=ONE_POOL)
    assert all(r.end is not None for r in outcome.runs)
    return {r.job.id: r.starts[0] for r in outcome.runs}


# --- replays worked out by hand (one node of 8 GPUs) -------------------------------------------
WORKLOAD = jobs(
    (0, 100, 4, 100),  # A: half the node for 100 s
    (1, 100, 8, 100),  # B: the whole node: waits for A
    (2, 10, 2, 10),  # C: small and short: EASY backfills it beside A, before B's reservation
    (3, 500, 2, 1000),  # D: small but long: would delay B, so EASY keeps it waiting
)


def test_fifo_lets_nothing_pass() -> None:
    assert starts("fifo", WORKLOAD) == {0: 0, 1: 100, 2: 200, 3: 200}


def test_easy_backfills_only_what_cannot_delay_the_head() -> None:
    assert starts("easy", WORKLOAD) == {0: 0, 1: 100, 2: 2, 3: 200}


def test_shortest_first_with_perfect_knowledge() -> None:
    # At 0 only A is there; at 2, C (10 s) starts beside A; D (500 s) fills the rest at 3 since
    # it fits, which delays B.
    assert starts("sjf", WORKLOAD) == {0: 0, 1: 503, 2: 2, 3: 3}


def test_fabriek_runs_the_same_workload_with_backfill() -> None:
    got = starts("fabriek", WORKLOAD)
    assert got[0] == 0 and got[2] == 2 and got[1] == 100  # C backfilled, B on its reservation
    assert got[3] >= 100  # D would have delayed B


def test_least_attained_service_preempts_and_resumes() -> None:
    # A (the whole node, 10 h) has 16 GPU-hours of service at 2 h: a new job B (no service)
    # goes first; A stops (30 s grace), B runs 100 s, A resumes where it stopped.
    machine = Machine(1)
    workload = jobs((0, 36000, 8, 86400), (7200, 100, 8, 900))
    outcome = simulate(workload, machine, make_policy("las", machine, ONE_POOL), pools=ONE_POOL)
    a, b = outcome.runs
    assert a.starts == [0, 7330] and a.preemptions == 1 and a.lost_gpu_s == 0
    assert b.starts == [7230] and b.end == 7330
    assert a.end == pytest.approx(7330 + 36000 - 7230)


@pytest.mark.parametrize(
    ("checkpoints", "borrower"),
    [
        # Pool a runs 4 GPUs within its guarantee and borrows b's idle 4 for a second job at 1 s;
        # b's job at 100 s reclaims them (the borrower stops at 130 s, after the grace period),
        # runs 100 s, and a's second job starts again at 230 s.
        (False, {"starts": [1, 230], "end": 1230, "lost_gpu_s": 4 * 129}),  # the run is lost
        (True, {"starts": [1, 230], "end": 1101, "lost_gpu_s": 0}),  # it resumes, 129 s done
    ],
)
def test_fabriek_reclaims_and_the_stopped_job_resumes_only_with_checkpoints(
    checkpoints: bool, borrower: dict[str, object]
) -> None:
    pools = (PoolShare("a", 0.5, 1), PoolShare("b", 0.5, 1))
    machine = Machine(1)
    workload = [
        SimJob(0, "a1", "a", 0.0, 2000.0, 4, 2000.0),
        SimJob(1, "a1", "a", 1.0, 1000.0, 4, 1000.0),
        SimJob(2, "b1", "b", 100.0, 100.0, 4, 100.0),
    ]
    policy = FabriekPolicy(machine, pools, checkpoints=checkpoints)
    own, big, owner = simulate(workload, machine, policy, pools=pools).runs
    assert {"starts": big.starts, "end": big.end, "lost_gpu_s": big.lost_gpu_s} == borrower
    assert big.preemptions == 1 and owner.starts == [130.0] and own.starts == [0.0]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_finishes_a_real_trace_with_sane_metrics(policy: str) -> None:
    trace = read_trace(data.path("itp/cluster01"), kind="itp")[:400]
    pools = parse_pools("regional=0.25:4,euro=0.5:8,commercial=0.25:4")
    workload = build(trace, pools=pools, seed=3, max_gpus=32)
    machine = Machine(4)
    workload = scale_arrivals(workload, machine.gpus, 0.8)
    outcome = simulate(workload, machine, make_policy(policy, machine, pools), pools=pools)
    metrics = summarise(outcome, {p.name: p.guarantee for p in pools})
    assert metrics["finished"] == len(workload)
    assert 0 < metrics["utilisation"] <= 1
    assert metrics["jct_s"]["mean"] >= metrics["wait_s"]["mean"]
    assert metrics["jct_s"]["p99"] >= metrics["jct_s"]["median"]
    used = sum(r.request.gpus * r.job.duration + r.lost_gpu_s for r in outcome.runs)
    assert sum(outcome.pool_gpu_s.values()) == pytest.approx(used, rel=1e-6)
    for run in outcome.runs:
        assert run.end == pytest.approx(run.starts[-1] + run.job.duration - run.progress_s)
        assert run.starts[0] >= run.job.submit
    # Discrete events: the policy is asked at most once per submission or end.
    assert metrics["decisions"] <= 2 * len(workload) + sum(r.preemptions for r in outcome.runs)


class _AlwaysAsk(FabriekPolicy):
    def idle(self, tally: Tally, free: Free) -> bool:
        return False


def test_events_skipped_as_idle_change_nothing() -> None:
    """The replay does not ask the engine when it provably has nothing to do (Policy.idle);
    asking it anyway gives the very same replay. Philly's gang jobs and borrowing pools make
    both kinds of skip happen (no room; no reclaim possible)."""
    trace = read_trace(data.path("philly"), kind="philly")[:1500]
    pools = parse_pools("regional=0.25:4,euro=0.5:8,commercial=0.25:4")
    workload = build(trace, pools=pools, seed=2)
    machine = Machine(gpus_for_load(workload, 1.0, 8) // 8)
    workload = scale_arrivals(workload, machine.gpus, 1.0)
    skipping = simulate(workload, machine, FabriekPolicy(machine, pools), pools=pools)
    asking = simulate(workload, machine, _AlwaysAsk(machine, pools), pools=pools)
    assert skipping.idle > 100 and asking.idle == 0
    assert sum(r.preemptions for r in asking.runs) > 0  # reclaim is part of what is compared
    assert [(r.job.id, r.starts, r.end, r.nodes) for r in skipping.runs] == [
        (r.job.id, r.starts, r.end, r.nodes) for r in asking.runs
    ]
    assert skipping.timeline == asking.timeline


@pytest.mark.parametrize("name", ["fifo", "easy", "sjf", "fairshare"])
def test_baselines_asked_at_every_event_replay_the_same(name: str) -> None:
    """The baselines only start jobs on free nodes, so the replay skips them when no waiting
    shape fits (Tally.fits_none); asking them anyway changes nothing, the accounting included."""
    trace = read_trace(data.path("philly"), kind="philly")[:2000]
    pools = parse_pools("regional=0.25:4,euro=0.5:8,commercial=0.25:4")
    workload = build(trace, pools=pools, seed=2)
    machine = Machine(gpus_for_load(workload, 1.0, 8) // 8)
    workload = scale_arrivals(workload, machine.gpus, 1.0)
    skipping = simulate(workload, machine, make_policy(name, machine, pools), pools=pools)
    always = make_policy(name, machine, pools)
    always.idle = lambda tally, free: False  # type: ignore[method-assign]
    asking = simulate(workload, machine, always, pools=pools)
    assert skipping.idle > 0 and asking.idle == 0  # FIFO: few; its blocked head is cheap
    assert [(r.job.id, r.starts, r.end, r.nodes) for r in skipping.runs] == [
        (r.job.id, r.starts, r.end, r.nodes) for r in asking.runs
    ]
    assert skipping.timeline == asking.timeline and skipping.pool_busy == asking.pool_busy
    assert skipping.pool_denied_s == asking.pool_denied_s


def test_flexible_work_waits_for_the_green_hours_and_keeps_its_deadline() -> None:
    """The engine's green planning in the replay: a flexible job is held for the hours of low
    intensity and started then (the replay wakes for it: nothing else happens at that moment),
    work that cannot wait is not held, and without a forecast nothing is."""
    machine = Machine(1)

    def intensity(t: float) -> float:  # 500 g/kWh for the first 6 hours of each day, then 100
        return 500.0 if (t // 3600) % 24 < 6 else 100.0

    flexible = SimJob(0, "p", "all", 0.0, 3600.0, 8, 3600.0, slack=12 * 3600.0)
    urgent = SimJob(1, "p", "all", 60.0, 600.0, 1, 900.0)
    green = simulate([flexible, urgent], machine,
                     FabriekPolicy(machine, ONE_POOL, forecast=intensity, epoch=0.0),
                     pools=ONE_POOL)  # fmt: skip
    held, other = green.runs
    assert held.deferred and 6 * 3600 <= held.starts[0] <= 7 * 3600
    assert flexible.deadline is not None and held.end is not None
    assert held.end <= flexible.deadline
    assert other.starts == [60.0]
    plain = simulate([flexible, urgent], machine, FabriekPolicy(machine, ONE_POOL), pools=ONE_POOL)
    assert plain.runs[0].starts == [0.0] and not plain.runs[0].deferred


def test_deadlines_missed_counts_late_flexible_jobs_with_or_without_deferral() -> None:
    """A flexible job stuck behind a whole-node job longer than its slack is late with no
    deferral at all: the count the report sets beside the deferred replay's own."""
    machine = Machine(1)
    workload = [
        SimJob(0, "p", "all", 0.0, 7200.0, 8, 7200.0),  # the node for 2 hours
        SimJob(1, "p", "all", 10.0, 600.0, 8, 600.0, slack=3600.0),  # late: starts at 7200
        SimJob(2, "p", "all", 20.0, 600.0, 8, 600.0, slack=4 * 3600.0),  # in time: ends 8400
    ]
    outcome = simulate(workload, machine, FabriekPolicy(machine, ONE_POOL), pools=ONE_POOL)
    assert [r.end for r in outcome.runs] == [7200.0, 7800.0, 8400.0]
    assert deadlines_missed(outcome) == 1
    assert summarise(outcome, {"all": 1.0})["flexible"] == {
        "jobs": 2,
        "deferred": 0,
        "deadlines_missed": 1,
    }


def test_mean_intensity_weighs_each_hour_by_the_time_in_it() -> None:
    grid = Grid(0.0, (100.0, 300.0, 200.0))
    assert mean_intensity(grid, 0.0, 5400.0) == pytest.approx((100 * 3600 + 300 * 1800) / 5400)
    assert mean_intensity(grid, 1800.0, 3600.0) == pytest.approx(200.0)  # half of 100, of 300
    assert mean_intensity(grid, 3 * 3600.0, 600.0) == 100.0  # past the end: it wraps


def test_utilisation_of_a_full_machine_is_one() -> None:
    machine = Machine(1)
    outcome = simulate(jobs((0, 100, 8, 100), (100, 50, 8, 50)), machine,
                       make_policy("fifo", machine, ONE_POOL), pools=ONE_POOL)  # fmt: skip
    metrics = summarise(outcome, {"all": 1.0})
    assert metrics["utilisation"] == pytest.approx(1.0)
    assert metrics["makespan_s"] == 150
    assert metrics["jct_s"]["mean"] == 75


# --- workloads ---------------------------------------------------------------------------------
def test_workloads_are_seeded_and_limits_over_request() -> None:
    trace = read_trace(data.path("itp/cluster02"), kind="itp")
    a, b = build(trace, seed=7), build(trace, seed=7)
    assert a == b
    assert build(trace, seed=8) != a
    assert all(j.time_limit >= j.duration for j in a)
    assert all(j.time_limit in LIMIT_STEPS or j.time_limit > LIMIT_STEPS[-1] for j in a)
    exact = build(trace, seed=7, exact_limits=True)
    assert all(j.time_limit == j.duration for j in exact)
    projects = {j.project for j in a}
    assert {j.pool for j in a} == {"regional", "euro", "commercial"} and len(projects) > 10


def test_philly_virtual_clusters_become_tenants() -> None:
    trace = read_trace(data.path("philly"), kind="philly")
    assert len(trace) == 82_247 and len({j.tenant for j in trace}) == 15
    workload = build(trace[:5000])
    assert all(j.project.split("-", 1)[1] in {t.tenant for t in trace} for j in workload)


def test_load_scaling_hits_the_target() -> None:
    workload = build(read_trace(data.path("itp/cluster03"), kind="itp"))
    for load in (0.6, 1.0, 1.2):
        assert offered_load(scale_arrivals(workload, 256, load), 256) == pytest.approx(load)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "no column 'submit_time'"),
        ("submit_time,run,n\n1,2,x\n", "row 2, column n: 'x' is not a number"),
        ("submit_time,run,n\nyesterday,2,1\n", "neither seconds nor a date"),
        ("submit_time,run,n\n1,2,1.5\n", "1.5 GPUs; a job has a whole number"),
        ("submit_time,run,n\n1,2,-1\n", "-1 GPUs; a job has a whole number"),
        ("submit_time,run,n\n1,-2,1\n", "row 2: a negative duration (-2)"),
        ("submit_time,run,n\n1,inf,1\n", "column run: 'inf' is not a finite number"),
        ("submit_time,run,n\nnan,2,1\n", "'nan' is not a finite number of seconds"),
        ("submit_time,run,n\n1,2,1\n3,4\n", "row 3: fewer fields than the header names"),
        ("submit_time,run,n\n", "no jobs in it"),
    ],
)
def test_csv_traces_with_a_mapping_and_their_errors(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    columns = {"submit": "submit_time", "duration": "run", "gpus": "n"}
    with pytest.raises(InvalidRequest, match=r"t\.csv") as caught:
        read_trace(path, kind="csv", columns=columns)
    assert message in str(caught.value)


def test_a_csv_trace_saved_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfsubmit_time,run,n\n1,2,1\n")  # as Excel saves "CSV UTF-8"
    columns = {"submit": "submit_time", "duration": "run", "gpus": "n"}
    assert [
        (j.submit, j.duration, j.gpus) for j in read_trace(path, kind="csv", columns=columns)
    ] == [(0.0, 2.0, 1)]


def test_a_csv_trace_with_dates(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("at,run,n,who\n2026-01-01T00:10:00,60,2,x\n2026-01-01T00:00:00,30,1,y\n")
    trace = read_trace(
        path, kind="csv", columns={"submit": "at", "duration": "run", "gpus": "n", "tenant": "who"}
    )
    assert [(j.submit, j.duration, j.gpus, j.tenant) for j in trace] == [
        (0.0, 30.0, 1, "y"),
        (600.0, 60.0, 2, "x"),
    ]


def test_a_study_with_its_report(tmp_path: Path) -> None:
    from fabriek.sim.report import html_report
    from fabriek.sim.run import Study, run_study

    result = run_study(
        Study(trace=data.path("itp/cluster01"), policies=("fifo", "fabriek"), max_jobs=300)
    )
    assert result["workload"]["jobs"] == 300
    assert result["workload"]["offered_load"] == pytest.approx(0.8)
    for p in result["policies"]:
        line = p["series"]["utilisation"]
        assert 0 < len(line) <= 300
        # The plotted line is the same utilisation as the figure: means of the same steps.
        assert sum(v for _, v in line) / len(line) == pytest.approx(p["utilisation"], rel=1e-3)
        shares = p["series"]["pool_share"]
        assert set(shares) == {"regional", "euro", "commercial"}
        total = [sum(s[k][1] for s in shares.values()) for k in range(len(line))]
        assert total == pytest.approx([v for _, v in line], abs=1e-4)
        cdf = p["series"]["jct_cdf_h"]
        assert [q for _, q in cdf] == sorted(q for _, q in cdf) and cdf[-1][1] == 1.0
        # Finish-time fairness per tenant: the figures the summary's index is made of.
        tenants = p["tenants"]
        assert sum(t["jobs"] for t in tenants.values()) == p["finished"]
        assert {t["pool"] for t in tenants.values()} <= {"regional", "euro", "commercial"}
        slow = [t["slowdown_mean"] for t in tenants.values()]
        assert min(slow) >= 1.0 and max(slow) == p["tenant_slowdown_worst"]
        jain = sum(slow) ** 2 / (len(slow) * sum(v * v for v in slow))
        assert jain == pytest.approx(p["tenant_slowdown_jain"])
    page = html_report(result)
    worst = max(result["policies"][0]["tenants"].items(), key=lambda t: t[1]["slowdown_mean"])
    tenant_table = page.split("Tenants: finish-time fairness")[1]
    first_row = tenant_table.split("<td>", 1)[1]  # the least fairly served first
    assert first_row.startswith(f"{worst[0]}</td>")
    first = result["policies"][0]
    wait = f"{first['tenants'][worst[0]]['wait_mean_h']:.1f}"
    assert f"{worst[1]['slowdown_mean']:.1f} / {wait}</td>" in first_row.split("</tr>")[0]
    row = page.split("<h2>Policies</h2>")[1].split("</tr>")[1]  # the first policy's row
    assert f"<td>{first['utilisation_while_arriving']:.1%}</td>" in row
    assert f"<td>{first['wait_s']['p95'] / 60:.0f}</td>" in row
    # regional and commercial are both owed 25 %: one dashed line, labelled with both.
    assert page.count(">regional, commercial 25</text>") == 2
    assert page.count("<svg") == 3 + 2  # utilisation, queue, JCT, and pool shares per policy
    assert "fabriek" in page
    assert not any(tag in page for tag in ("<script", "<link", 'src="http', 'href="http'))
    with pytest.raises(InvalidRequest, match="unknown policy tiresias"):
        run_study(Study(trace=data.path("itp/cluster01"), policies=("tiresias",)))


def test_the_footprint_of_a_replay_on_the_dutch_grid() -> None:
    from fabriek.sim.green import WATTS_PER_GPU, Grid
    from fabriek.sim.report import html_report
    from fabriek.sim.run import Study, run_study

    series = data.path("nl-grid")
    trace = data.path("itp/cluster01")
    result = run_study(
        Study(trace=trace, policies=("fifo", "las"), max_jobs=300, carbon_series=series)
    )
    # Expected: every job's GPUs (whole nodes above 8) x its run time x the watts per GPU.
    machine = Machine(result["machine"]["nodes"])
    jobs_ = build(read_trace(trace, kind="itp")[:300], seed=1)
    gpu_s = sum(machine.request(j).gpus * j.duration for j in jobs_)
    grid = Grid.read(series)
    for p in result["policies"]:  # las stops and resumes runs: the same energy in the end
        g = p["green"]
        assert g["it_mwh"] == pytest.approx(gpu_s * WATTS_PER_GPU / 3.6e9)
        assert g["facility_mwh"] == pytest.approx(g["it_mwh"] * 1.2)
        assert g["water_m3"] == pytest.approx(g["it_mwh"] * 1.2 * 1.8)
        assert min(grid.values) <= g["mean_g_per_kwh"] <= max(grid.values)
        assert g["t_co2e"] == pytest.approx(g["facility_mwh"] * g["mean_g_per_kwh"] / 1000)
    assert "Energy, water and carbon" in html_report(result)


def test_policies_replayed_side_by_side_give_the_same_study() -> None:
    """Each policy replays in its own process when asked; the study is the same as with every
    policy replayed here, one after another (but for the replays' own timings), and progress
    comes back from the workers, fabriek's replay without deferral too."""
    from fabriek.sim.run import Study, run_study

    study = Study(trace=data.path("itp/cluster01"), policies=("fifo", "easy", "fabriek"),
                  max_jobs=300, carbon_series=data.path("nl-grid"),
                  flexible=0.3)  # fmt: skip
    seen: dict[str, tuple[int, int]] = {}
    apart = run_study(study, lambda name, done, total: seen.update({name: (done, total)}),
                      workers=2)  # fmt: skip
    here = run_study(study, workers=1)
    for result in (apart, here):
        for p in result["policies"]:
            del p["replay_s"], p["jobs_per_s"]
    assert apart == here
    assert [p["policy"] for p in apart["policies"]] == ["fifo", "easy", "fabriek"]
    assert "saved_t_co2e" in apart["policies"][2]["green"]
    assert seen == dict.fromkeys(["fifo", "easy", "fabriek", "fabriek (no deferral)"], (300, 300))
    with pytest.raises(InvalidRequest, match="at least 1"):
        run_study(study, workers=0)
