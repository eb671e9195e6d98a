"""The green-computing arithmetic and the parsing of operators' files, without a database."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from fabriek import data
from fabriek.core.errors import InvalidRequest
from fabriek.core.green import (
    Facility,
    footprint,
    greenest_start,
    parse_intensity_csv,
    parse_pue_csv,
)
from fabriek.core.jobs import JobRequest, Resources, flexible_deadline

EM_HEADER = (
    "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
    "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
    "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method"
)


def _em(*rows: str) -> str:
    return "\n".join([EM_HEADER, *rows]) + "\n"


def test_electricity_maps_export_is_read_hour_by_hour() -> None:
    rows = parse_intensity_csv(
        _em(
            "2021-01-01 00:00:00,Netherlands,Netherlands,NL,374.73,464.86,29.02,21.86,ned.nl,False,",
            "2021-01-01 01:00:00,Netherlands,Netherlands,NL,372.33,460.28,31.81,23.42,ned.nl,False,",
        )
    )
    assert [(r.hour, r.direct, r.life_cycle) for r in rows] == [
        (datetime(2021, 1, 1, 0, tzinfo=UTC), 374.73, 464.86),
        (datetime(2021, 1, 1, 1, tzinfo=UTC), 372.33, 460.28),
    ]


def test_the_dutch_2021_2023_series_shipped_with_fabriek_loads_whole() -> None:
    rows = parse_intensity_csv(data.read_text(data.path("nl-grid")))
    assert len(rows) == (datetime(2024, 1, 1) - datetime(2021, 1, 1)).days * 24
    assert all(r.life_cycle is not None for r in rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("when,what\n2021-01-01,1\n", "header is not one fabriek reads"),
        (
            "Datetime (UTC),Carbon intensity kgCO2/MWh\n2021-01-01 00:00:00,0.3\n",
            "no intensity column in g CO2e/kWh (found Carbon intensity kgCO2/MWh",
        ),
        (
            _em("2021-01-01 00:00:00,NL,NL,NL,abc,1,,,,,"),
            "row 2, column 'Carbon intensity gCO₂eq/kWh (direct)': 'abc' is not a number",
        ),
        (_em("2021-01-01 00:00:00,NL,NL,NL,374000,1,,,,,"), "outside 0 to 2000 (wrong units?"),
        (
            _em("yesterday,NL,NL,NL,1,1,,,,,"),
            "row 2, column 'Datetime (UTC)': 'yesterday' is not a date",
        ),
        (_em("2021-01-01 00:30:00,NL,NL,NL,1,1,,,,,"), "not on the hour"),
        (
            _em("2021-01-01 00:00:00,NL,NL,NL,1,1,,,,,", "2021-01-01 03:00:00,NL,NL,NL,1,1,,,,,"),
            "row 3, column 'Datetime (UTC)': a gap from 2021-01-01 00:00 to 2021-01-01 03:00",
        ),
        (
            _em("2021-01-01 01:00:00,NL,NL,NL,1,1,,,,,", "2021-01-01 00:00:00,NL,NL,NL,1,1,,,,,"),
            "is not after the row before",
        ),
        (_em("2021-01-01 00:00:00,NL,NL,NL,,,,,,,"), "row 2: no intensity in either column"),
        ("hour,direct_g_per_kwh\n", "a header but no rows"),
    ],
)
def test_bad_carbon_files_name_the_row_and_column(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_intensity_csv(text)
    assert message in caught.value.message


def test_pue_series_and_the_facility_model_refuse_the_impossible() -> None:
    assert parse_pue_csv("from,pue\n2026-01-01,1.3\n2026-06-01T00:00Z,1.15\n") == [
        (datetime(2026, 1, 1, tzinfo=UTC), 1.3),
        (datetime(2026, 6, 1, tzinfo=UTC), 1.15),
    ]
    with pytest.raises(
        InvalidRequest, match=re.escape("row 2, column 'pue': 0.9 is outside 1 to 5")
    ):
        parse_pue_csv("from,pue\n2026-01-01,0.9\n")
    with pytest.raises(InvalidRequest, match="PUE below 1 is impossible"):
        Facility(pue=0.95).check()
    with pytest.raises(InvalidRequest, match="carbon column"):
        Facility(carbon_column="average").check()


def test_a_jobs_footprint_follows_the_formulas_hour_by_hour() -> None:
    h0, h1 = datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 11, tzinfo=UTC)
    facility = Facility(pue=1.5, wue_onsite=0.5, water_offsite=2.0)
    # 2 kWh in the first hour at 100 g/kWh, 1 kWh in the second at 300 g/kWh (mapped).
    result = footprint(
        {h0: 2 * 3.6e6, h1: 1 * 3.6e6},
        facility,
        pue_at=[(h1, 1.2)],  # the PUE series changes at the second hour
        intensity_at={h0: (100.0, True), h1: (300.0, False)},
    )
    assert result.it_kwh == pytest.approx(3.0)
    assert result.facility_kwh == pytest.approx(2 * 1.5 + 1 * 1.2)
    assert result.water_l == pytest.approx(2 * (0.5 + 1.5 * 2.0) + 1 * (0.5 + 1.2 * 2.0))
    assert result.carbon_kg == pytest.approx((2 * 1.5 * 100 + 1 * 1.2 * 300) / 1000)
    assert "NL grid, life-cycle intensity" in result.carbon_note
    assert "29% of it from the same hour of the series' latest year" in result.carbon_note
    unknown = footprint({h0: 3.6e6}, facility)
    assert unknown.carbon_kg is None and "no life-cycle grid intensity" in unknown.carbon_note


def test_the_greenest_window_within_the_deadline() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    forecast = [300, 300, 250, 100, 120, 400, 50]
    # A 2-hour job, submitted at 00:30, that must end by 06:00: latest start 04:00.
    window = greenest_start(
        forecast, start, now=start + 1800, latest_start=start + 4 * 3600, run_s=7200
    )
    assert window is not None
    assert window.start == start + 3 * 3600 and window.intensity == pytest.approx(110)
    assert window.now_intensity == pytest.approx((0.5 * 300 + 1 * 300 + 0.5 * 250) / 2)
    # The cleanest hour (06:00) lies beyond its deadline: never chosen.
    assert window.start + 7200 <= start + 6 * 3600
    assert greenest_start([], start, now=start, latest_start=start + 3600, run_s=60) is None


def test_flexibility_needs_a_time_limit_and_a_deadline_it_can_keep() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    base = JobRequest("j", "p", ["true"], Resources(1, 2**30), 3600, {})
    assert flexible_deadline(base, now) is None
    assert flexible_deadline(replace(base, flexible_s=12 * 3600), now) == now + timedelta(hours=13)
    for request, message in [
        (replace(base, flexible_s=3600, time_limit_given=False), "needs a time limit"),
        (replace(base, deadline=now + timedelta(minutes=30)), "before the job could finish"),
        (replace(base, deadline=now + timedelta(days=9)), "too far ahead"),
        (replace(base, flexible_s=3600, deadline=now + timedelta(hours=5)), "not both"),
        (replace(base, flexible_s=8 * 86400), "at most 7 days"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            flexible_deadline(request, now)
