"""API schemas: usage reports and the facility: its model, grid series and meter readings."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from fabriek.server.schemas.types import ZONE, Input, Number, Timestamp


class UsageReportOut(BaseModel):
    key: str = Field(
        description="The pool, organisation, kind or project; 'factory' for the total."
    )
    gpu_hours: float
    jobs: int = Field(description="Jobs that ran in the period.")
    started: int = Field(description="Jobs that started in the period.")
    mean_wait_s: float | None = Field(description="Mean time from submission to start.")
    it_kwh: float = Field(0.0, description="Energy its ended jobs' IT used in the period.")
    facility_kwh: float = Field(0.0, description="The same at the facility's meter (x PUE).")
    water_l: float = Field(0.0, description="Water, on site and at the power plants.")
    carbon_kg: float | None = Field(None, description="kg CO2e; none without grid data.")


class ShareOut(BaseModel):
    pool: str
    guarantee: float
    guaranteed_gpu_hours: float
    delivered_gpu_hours: float
    demand_hours: float = Field(description="Time the pool had work waiting.")
    served_fraction: float | None = Field(
        description="Of that time, the part with at least its guarantee running."
    )
    worst_shortfall_gpus: int


# --- facility -------------------------------------------------------------------------------------
class FacilityUpdate(Input):
    pue: Number | None = Field(None, description="Power usage effectiveness, 1 or more.")
    wue_onsite: Number | None = Field(None, description="Litres of water per IT kWh, on site.")
    water_offsite: Number | None = Field(
        None, description="Litres of water per kWh of electricity, at the power plants."
    )
    carbon_column: Literal["life_cycle", "direct"] | None = Field(
        None, description="Which grid intensity carbon accounting uses."
    )
    zone: str | None = Field(
        None,
        description="The grid zone of the series, e.g. NL.",
        json_schema_extra={"pattern": ZONE},
    )


class SeriesOut(BaseModel):
    zone: str
    rows: int
    first: datetime
    last: datetime
    columns: list[str]


class FacilityOut(BaseModel):
    pue: float
    wue_onsite: float
    water_offsite: float
    carbon_column: str
    zone: str
    pue_series: list[tuple[datetime, float]] = Field(description="(from, PUE), where loaded.")
    intensity: list[SeriesOut] = Field(description="Measured grid carbon intensity loaded.")
    forecasts: list[SeriesOut] = Field(description="Operator-provided forecasts loaded.")


class ReadingCreate(Input):
    starts_at: Timestamp
    ends_at: Timestamp
    total_kwh: Number = Field(description="The facility's total energy in the period.")
    it_kwh: Number = Field(description="Its IT equipment's energy.")
    water_m3: Number = Field(description="Water taken in.")
    renewable_kwh: Number = Field(0.0, description="Renewable energy used.")
    reused_heat_kwh: Number = Field(0.0, description="Heat delivered for reuse.")


class ReadingOut(BaseModel):
    id: int
    starts_at: datetime
    ends_at: datetime
    total_kwh: float
    it_kwh: float
    water_m3: float
    renewable_kwh: float
    reused_heat_kwh: float
    entered_by: str
