"""The capacity planner: sizes within a budget, each simulated and costed by stated formulas."""

from __future__ import annotations

import pytest

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.sim.plan import (
    DEFAULT_COSTS,
    DEFAULT_HARDWARE,
    DEFAULTS,
    HARDWARE,
    HARDWARE_SOURCES,
    HOURS_PER_YEAR,
    Demand,
    Hardware,
    candidate_nodes,
    mean_intensity,
    plan,
)

GRID = data.path("nl-grid")


def test_sizes_spread_over_the_budget() -> None:
    assert candidate_nodes((80e6, 120e6), DEFAULT_HARDWARE, 5) == [229, 257, 285, 314, 342]
    assert candidate_nodes((1e6, 1e6), DEFAULT_HARDWARE, 3) == [3]
    with pytest.raises(InvalidRequest, match="budget"):
        candidate_nodes((0, 1e6), DEFAULT_HARDWARE, 3)
    # A budget in euros where millions were meant buys nothing: refused, not one node over it.
    with pytest.raises(InvalidRequest, match="at most €120 buys not one H100 node"):
        candidate_nodes((80, 120), DEFAULT_HARDWARE, 5)
    assert candidate_nodes((100e3, 400e3), DEFAULT_HARDWARE, 5) == [1]


def test_a_demand_of_users_is_the_trace_tenants_mean_times_their_number() -> None:
    trace = data.path("itp/cluster01")
    own = plan(Demand(trace, max_jobs=300), budget=(2.8e6, 2.8e6), sizes=1, carbon_series=GRID)
    d = own["demand"]
    assert d["users"] is None and d["gpu_hours_per_year"] == d["trace_gpu_hours_per_year"]
    assert d["trace_tenants"] > 1
    assert d["gpu_hours_per_user_per_year"] == pytest.approx(
        d["trace_gpu_hours_per_year"] / d["trace_tenants"]
    )
    users = 3 * d["trace_tenants"]
    triple = plan(Demand(trace, users=users, max_jobs=300), budget=(2.8e6, 2.8e6), sizes=1,
                  carbon_series=GRID)  # fmt: skip
    assert triple["demand"]["users"] == users
    assert triple["demand"]["gpu_hours_per_year"] == pytest.approx(3 * d["gpu_hours_per_year"])
    assert triple["sizes"][0]["offered_load"] == pytest.approx(3 * own["sizes"][0]["offered_load"])
    for wrong, message in (({"users": 0}, "at least 1"), ({"users": 5, "gpu_hours_per_year": 1e5},
                           "not both")):  # fmt: skip
        with pytest.raises(InvalidRequest, match=message):
            plan(Demand(trace, max_jobs=300, **wrong), budget=(2.8e6, 2.8e6), sizes=1,  # type: ignore[arg-type]
                 carbon_series=GRID)  # fmt: skip


def test_each_size_is_simulated_and_costed() -> None:
    demand = Demand(data.path("itp/cluster01"), gpu_hours_per_year=150_000,
                    max_jobs=300)  # fmt: skip
    result = plan(demand, budget=(2.8e6, 5.6e6), sizes=2, carbon_series=GRID)
    small, large = result["sizes"]
    assert (small["nodes"], large["nodes"]) == (8, 16)
    intensity = mean_intensity(GRID)
    assert 100 < intensity < 600  # g/kWh, the Dutch series' life-cycle mean
    for row in result["sizes"]:
        assert row["capex_eur"] == row["nodes"] * DEFAULT_HARDWARE.price_eur
        assert row["offered_load"] == pytest.approx(150_000 / (row["gpus"] * HOURS_PER_YEAR))
        assert row["finished"] == row["jobs"]  # the machine keeps up: it is busy `load`
        assert row["utilisation"] == pytest.approx(row["offered_load"])
        kw = (
            row["nodes"]
            * DEFAULT_HARDWARE.max_kw
            * (
                DEFAULT_HARDWARE.idle_fraction
                + (1 - DEFAULT_HARDWARE.idle_fraction) * row["utilisation"]
            )
        )
        assert row["it_mwh_per_year"] == pytest.approx(kw * HOURS_PER_YEAR / 1000)
        assert row["facility_mwh_per_year"] == pytest.approx(
            row["it_mwh_per_year"] * DEFAULT_COSTS.pue
        )
        assert row["t_co2e_per_year"] == pytest.approx(
            row["facility_mwh_per_year"] * intensity / 1000
        )
        assert row["water_m3_per_year"] == pytest.approx(
            row["it_mwh_per_year"] * DEFAULT_COSTS.pue * DEFAULT_COSTS.water_offsite_l_per_kwh
        )
    assert large["offered_load"] == pytest.approx(small["offered_load"] / 2)
    assert large["wait_p95_h"] <= small["wait_p95_h"]
    assert large["opex_eur_per_year"] > small["opex_eur_per_year"]
    # Every default says where it comes from.
    assert all(len(source) > 20 for _, source in DEFAULTS.values())
    assert result["defaults"]["node_max_kw"]["value"] == DEFAULT_HARDWARE.max_kw


def test_sizes_replayed_side_by_side_give_the_same_plan() -> None:
    """Each size replays in its own process when there are cores for it; the plan is the same
    as with every size replayed here, one after another."""
    demand = Demand(data.path("itp/cluster01"), gpu_hours_per_year=150_000,
                    max_jobs=300)  # fmt: skip
    seen: list[tuple[int, int]] = []
    apart = plan(demand, budget=(2.8e6, 5.6e6), sizes=3, carbon_series=GRID, workers=3,
                 progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    alone: list[tuple[int, int]] = []
    here = plan(demand, budget=(2.8e6, 5.6e6), sizes=3, carbon_series=GRID, workers=1,
                progress=lambda done, total: alone.append((done, total)))  # fmt: skip
    assert apart["sizes"] == here["sizes"]
    assert [row["nodes"] for row in here["sizes"]] == [8, 12, 16]
    # Progress in jobs replayed over all sizes, from the workers as they go, to the end.
    total = 3 * here["sizes"][0]["jobs"]
    assert {t for _, t in seen} == {total} and seen[-1] == (total, total)
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(set(done)) > 3
    assert alone[-1] == (total, total) and [d for d, _ in alone] == sorted(d for d, _ in alone)


def test_hardware_options_are_sized_and_costed_side_by_side() -> None:
    """Two options alike but for speed: the same nodes, half the load on the faster one (every
    job runs half as long), and a cost per GPU-hour of the demand that counts the speed."""
    demand = Demand(data.path("itp/cluster01"), gpu_hours_per_year=150_000,
                    max_jobs=300)  # fmt: skip
    slow = Hardware("slow", 8, 350_000.0, 10.2, 0.3, 5.0, 1.0)
    fast = Hardware("fast", 8, 350_000.0, 10.2, 0.3, 5.0, 2.0)
    result = plan(demand, budget=(2.8e6, 5.6e6), sizes=2, hardware=[slow, fast],
                  carbon_series=GRID, workers=1)  # fmt: skip
    rows = {(row["hardware"], row["nodes"]): row for row in result["sizes"]}
    assert list(rows) == [("slow", 8), ("slow", 16), ("fast", 8), ("fast", 16)]
    assert [h["name"] for h in result["hardware"]] == ["slow", "fast"]
    for nodes in (8, 16):
        s, f = rows["slow", nodes], rows["fast", nodes]
        assert f["offered_load"] == pytest.approx(s["offered_load"] / 2)
        assert f["finished"] == f["jobs"] == s["jobs"]  # the same jobs, all served
        assert f["utilisation"] == pytest.approx(f["offered_load"])
        assert f["wait_p95_h"] <= s["wait_p95_h"]
        yearly = (
            f["capex_eur"] / fast.lifetime_years
            + f["facility_mwh_per_year"] * 1000 * DEFAULT_COSTS.electricity_eur_per_kwh
            + f["capex_eur"] * DEFAULT_COSTS.maintenance_per_year
        )
        assert f["cost_per_demand_gpu_hour_eur"] == pytest.approx(yearly / 150_000)
        assert s["cost_per_demand_gpu_hour_eur"] == pytest.approx(s["cost_per_gpu_hour_eur"])
        # Less busy, it draws less: the same demand costs less on the faster GPU.
        assert f["facility_mwh_per_year"] < s["facility_mwh_per_year"]
        assert f["cost_per_demand_gpu_hour_eur"] < s["cost_per_demand_gpu_hour_eur"]
    with pytest.raises(InvalidRequest, match="same name"):
        plan(demand, budget=(2.8e6, 5.6e6), sizes=1, hardware=[slow, slow], carbon_series=GRID)


def test_every_hardware_option_says_where_its_figures_come_from() -> None:
    assert HARDWARE["h100"].speed == 1.0  # the demand is counted in H100 GPU-hours
    for key, option in HARDWARE.items():
        assert option.gpus_per_node == 8 and option.speed >= 1.0
        assert set(HARDWARE_SOURCES[key]) == {"price_eur", "max_kw", "speed"}
        assert all(len(source) > 30 for source in HARDWARE_SOURCES[key].values())
