"""Decayed usage for fair share."""

from __future__ import annotations

import math

import pytest

from fabriek.scheduling.fairshare import Use, decayed_usage

DAY = 86400.0


def test_recent_use_counts_fully_and_old_use_by_half_lives() -> None:
    now = 100 * DAY
    hour = 3600.0
    fresh = decayed_usage([Use("a", 1, now - hour, now)], now=now, half_life_s=DAY)
    assert fresh["a"] == pytest.approx(hour, rel=0.03)  # an hour ago barely decays
    week_old = decayed_usage(
        [Use("a", 2, now - 7 * DAY - hour, now - 7 * DAY)], now=now, half_life_s=7 * DAY
    )
    assert week_old["a"] == pytest.approx(2 * hour / 2, rel=0.01)  # one half-life: half


def test_integral_matches_summing_small_slices() -> None:
    now, half = 50 * DAY, 3 * DAY
    use = Use("p", 4, now - 10 * DAY, now - 2 * DAY)
    exact = decayed_usage([use], now=now, half_life_s=half)["p"]
    step = 60.0
    slices = sum(
        4 * step * 2 ** (-(now - (use.start + (i + 0.5) * step)) / half)
        for i in range(int((use.end - use.start) / step))
    )
    assert math.isclose(exact, slices, rel_tol=1e-4)


def test_projects_add_up_and_future_or_empty_use_counts_nothing() -> None:
    now = 10 * DAY
    got = decayed_usage(
        [
            Use("a", 1, now - 100, now),
            Use("a", 1, now - 100, now),
            Use("b", 0, now - 100, now),  # no GPUs
            Use("c", 1, now + 10, now + 20),  # not yet
            Use("d", 1, now - 50, now + 50),  # running: counts until now
        ],
        now=now,
        half_life_s=DAY,
    )
    assert set(got) == {"a", "d"}
    assert got["a"] == pytest.approx(2 * got["d"] * 2, rel=0.01)
    with pytest.raises(ValueError):
        decayed_usage([], now=now, half_life_s=0)
