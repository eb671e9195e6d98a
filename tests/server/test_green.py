"""The facility model, grid series, job footprints, green deferral in the live controller and the
facility report, on both databases."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Conflict, Forbidden, InvalidRequest
from fabriek.core.jobs import JobState
from fabriek.server.db.models import (
    AuditEventRow,
    GridIntensityRow,
    JobEnergyHourRow,
    JobRow,
)
from fabriek.server.services import facility
from fabriek.server.services.jobs import get_job, submit_job
from tests.conftest import FrozenClock
from tests.server.factories import PARTITIONS, make_admin, make_request, make_user
from tests.server.test_controller import make_controller, settle

PLAIN = "hour,direct_g_per_kwh,life_cycle_g_per_kwh\n"


def _series(start: datetime, values: list[float]) -> str:
    lines = [
        f"{(start + timedelta(hours=i)).isoformat()},{v * 0.8:.1f},{v:.1f}"
        for i, v in enumerate(values)
    ]
    return PLAIN + "\n".join(lines) + "\n"


def test_operators_set_the_model_and_bad_values_change_nothing(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden):
            facility.set_facility(session, actor=alice, now=clock(), pue=1.1)
        with pytest.raises(InvalidRequest, match="PUE below 1"):
            facility.set_facility(session, actor=admin, now=clock(), pue=0.8)
    with sessions() as session:
        assert facility.get_facility(session).pue == 1.2  # the default
        changes = select(func.count()).where(AuditEventRow.action == "facility.update")
        assert session.scalar(changes) == 0
    with sessions() as session, session.begin():
        facility.set_facility(session, actor=admin, now=clock(), pue=1.3, wue_onsite=0.4)
        facility.set_facility(session, actor=admin, now=clock(), water_offsite=1.8)
    with sessions() as session:
        model = facility.get_facility(session)
        assert (model.pue, model.wue_onsite, model.water_offsite) == (1.3, 0.4, 1.8)


def test_a_series_loads_whole_or_not_at_all_and_replaces_the_hours_it_covers(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    start = datetime(2023, 6, 1, tzinfo=UTC)
    with sessions() as session, session.begin():
        loaded = facility.load_intensity(
            session, actor=admin, text=_series(start, [100, 200, 300]), zone="NL",
            forecast=False, now=clock(),
        )  # fmt: skip
    assert (loaded.rows, loaded.first, loaded.columns) == (3, start, ("direct", "life_cycle"))
    gap = _series(start, [1, 2]) + f"{(start + timedelta(hours=5)).isoformat()},1,1\n"
    with (
        sessions() as session,
        session.begin(),
        pytest.raises(InvalidRequest, match="row 4, column 'hour': a gap"),
    ):
        facility.load_intensity(
            session, actor=admin, text=gap, zone="NL", forecast=False, now=clock()
        )
    with sessions() as session, session.begin():  # a correction of the second hour only
        facility.load_intensity(
            session, actor=admin, text=_series(start + timedelta(hours=1), [250]), zone="NL",
            forecast=False, now=clock(),
        )  # fmt: skip
    with sessions() as session:
        values = session.scalars(
            select(GridIntensityRow.life_cycle).order_by(GridIntensityRow.hour)
        ).all()
    assert values == [100, 250, 300]


def _job_with_energy(
    sessions: sessionmaker[Session], clock: FrozenClock, hours: dict[datetime, float]
) -> int:
    admin, _ = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        job = submit_job(
            session, actor=admin, request=make_request(), partitions=PARTITIONS,             now=clock(),
        )  # fmt: skip
        row = session.get(JobRow, job.id)
        assert row is not None
        row.cpu_energy_j = sum(hours.values())
        for hour, joules in hours.items():
            session.add(JobEnergyHourRow(job_id=job.id, hour=hour, joules=joules))
    return job.id


def test_a_jobs_footprint_uses_each_hours_intensity_or_the_same_hour_of_the_latest_year(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    h0 = datetime(2026, 6, 1, 10, tzinfo=UTC)
    job_id = _job_with_energy(sessions, clock, {h0: 3.6e6, h0 + timedelta(hours=1): 3.6e6})
    with sessions() as session, session.begin():
        admin = facility.Actor(None, "op", is_operator=True)
        facility.set_facility(session, actor=admin, now=clock(), pue=1.5, wue_onsite=1.0)
        # Measured 2026 10:00 only; 11:00 comes from 2023's series.
        facility.load_intensity(
            session, actor=admin, text=_series(h0, [200]), zone="NL", forecast=False, now=clock()
        )
        facility.load_intensity(
            session, actor=admin, text=_series(datetime(2023, 6, 1, 11, tzinfo=UTC), [400]),
            zone="NL", forecast=False, now=clock(),
        )  # fmt: skip
        row = session.get(JobRow, job_id)
        assert row is not None
        facility.account_job(session, row)
    with sessions() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        assert row.facility_kwh == pytest.approx(3.0)
        assert row.water_l == pytest.approx(2.0)
        assert row.carbon_kg == pytest.approx((1.5 * 200 + 1.5 * 400) / 1000)
        assert "50% of it from the same hour of the series' latest year" in (row.carbon_note or "")


def test_a_held_back_job_records_the_carbon_it_saved(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    submitted = clock()
    start = submitted.replace(minute=0, second=0, microsecond=0)
    ran_at = start + timedelta(hours=3)
    job_id = _job_with_energy(sessions, clock, {ran_at: 3.6e6})
    with sessions() as session, session.begin():
        admin = facility.Actor(None, "op", is_operator=True)
        facility.set_facility(session, actor=admin, now=clock(), pue=1.0)
        facility.load_intensity(
            session, actor=admin, text=_series(start, [400, 400, 400, 100]), zone="NL",
            forecast=False, now=clock(),
        )  # fmt: skip
        row = session.get(JobRow, job_id)
        assert row is not None
        row.green_start_at, row.started_at, row.carbon_at_once_g = ran_at, ran_at, 390.0
        facility.account_job(session, row)
        assert row.carbon_kg == pytest.approx(0.1)
        assert row.carbon_saved_kg == pytest.approx(0.4 - 0.1)  # measured, not the forecast


def test_the_controller_holds_a_flexible_job_for_the_greener_hour(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    hour = clock().replace(minute=0, second=0, microsecond=0)
    with sessions() as session, session.begin():
        facility.load_intensity(
            session, actor=admin, text=_series(hour, [400, 100, 400, 400]), zone="NL",
            forecast=True, now=clock(),
        )  # fmt: skip
    controller = make_controller(sessions, tmp_path, clock)
    request = replace(make_request(argv=["true"], time_limit_s=600), flexible_s=3 * 3600)
    with sessions() as session, session.begin():
        job = submit_job(session, actor=admin, request=request, partitions=PARTITIONS, now=clock())
        bad = replace(request, time_limit_given=False)
        with pytest.raises(InvalidRequest, match="needs a time limit"):
            submit_job(session, actor=admin, request=bad, partitions=PARTITIONS, now=clock())
    now_job = submit_job_now(sessions, admin, clock)
    controller.run_pass()
    with sessions() as session:
        waiting = get_job(session, actor=admin, job_id=job.id)
        other = get_job(session, actor=admin, job_id=now_job)
    assert waiting.state == JobState.PENDING and other.state != JobState.PENDING
    assert waiting.reason is not None and waiting.reason.startswith(
        f"waiting for a greener hour: forecast 100 g/kWh at {hour + timedelta(hours=1):%H:%M} UTC vs 400 now"
    )
    assert waiting.green_start_at == hour + timedelta(hours=1)
    with sessions() as session:
        assert session.get(JobRow, job.id).carbon_at_once_g == pytest.approx(400)  # type: ignore[union-attr]
    clock.advance(3600)  # the greener hour has come
    done = settle(controller, sessions, admin, [job.id, now_job])
    assert [j.state for j in done] == [JobState.SUCCEEDED, JobState.SUCCEEDED]


def submit_job_now(
    sessions: sessionmaker[Session], admin: facility.Actor, clock: FrozenClock
) -> int:
    with sessions() as session, session.begin():
        return submit_job(
            session, actor=admin, request=make_request(argv=["true"]), partitions=PARTITIONS,
            now=clock(),
        ).id  # fmt: skip


def test_the_facility_report_puts_the_meters_beside_the_jobs_energy(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    january = datetime(2026, 1, 1, tzinfo=UTC)
    _job_with_energy(sessions, clock, {january + timedelta(hours=5): 100 * 3.6e6})
    admin = facility.Actor(None, "op", is_operator=True)
    alice = make_user(sessions, "alice", clock())
    reading = dict(
        starts_at=january, ends_at=january + timedelta(days=31), total_kwh=1300.0,
        it_kwh=1000.0, water_m3=1.5, renewable_kwh=650.0, reused_heat_kwh=130.0,
    )  # fmt: skip
    with sessions() as session, session.begin():
        facility.add_reading(session, actor=admin, now=clock(), **reading)  # type: ignore[arg-type]
        with pytest.raises(Conflict, match="overlaps"):
            facility.add_reading(session, actor=admin, now=clock(), **reading)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="PUE below 1"):
            facility.add_reading(
                session, actor=admin, now=clock(), **{**reading, "starts_at": january + timedelta(days=40),  # type: ignore[arg-type]
                "ends_at": january + timedelta(days=41), "total_kwh": 900.0},
            )  # fmt: skip
        with pytest.raises(Forbidden):
            facility.add_reading(
                session,
                actor=alice,
                now=clock(),
                **{**reading, "starts_at": january + timedelta(days=60)},
            )  # type: ignore[arg-type]
    with sessions() as session:
        [row] = facility.facility_report(
            session, actor=admin, start=january, end=january + timedelta(days=365)
        )
        assert row["pue"] == pytest.approx(1.3)
        assert row["wue_l_per_kwh"] == pytest.approx(1.5)
        assert row["renewable_energy_factor"] == pytest.approx(0.5)
        assert row["energy_reuse_factor"] == pytest.approx(0.1)
        assert row["jobs_it_energy_kwh"] == pytest.approx(100.0)
        assert row["jobs_share_of_it_energy"] == pytest.approx(0.1)
        text = facility.report_csv([row])
        assert text.splitlines()[0].startswith("period_start,period_end,total_energy_kwh")
        assert len(text.splitlines()) == 2
