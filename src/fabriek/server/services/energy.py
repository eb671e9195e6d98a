"""A job's energy, as its backend metered it: added up over its runs, and kept per hour."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fabriek.backends.base import Energy
from fabriek.server.db.models import JobEnergyHourRow, JobRow

COMPONENTS = ("gpu", "cpu", "dram")


def record_energy(session: Session, job: JobRow, energy: Energy | None) -> None:
    """Add one run's energy to the job (a preempted job runs more than once). A component is
    `measured` only if every run measured it."""
    if energy is None:
        return
    methods = dict(job.energy_methods or {})
    for component, reading in energy.components.items():
        if component not in COMPONENTS:
            continue
        column = f"{component}_energy_j"
        setattr(job, column, (getattr(job, column) or 0.0) + reading.joules)
        before = methods.get(component)
        measured = reading.measured and (before is None or bool(before.get("measured")))
        methods[component] = {"method": reading.method, "measured": measured}
    job.energy_methods = methods
    if not energy.by_hour:
        return
    known = {
        row.hour: row
        for row in session.scalars(
            select(JobEnergyHourRow).where(JobEnergyHourRow.job_id == job.id)
        )
    }
    for hour, joules in energy.by_hour.items():
        if hour in known:
            known[hour].joules += joules
        else:
            session.add(JobEnergyHourRow(job_id=job.id, hour=hour, joules=joules))
