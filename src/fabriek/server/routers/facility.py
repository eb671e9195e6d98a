"""The facility: its model (PUE, water), the grid's carbon intensity, meter readings, and the
report for the EU's data-centre reporting. Everyone signed in reads the model (it explains their
jobs' footprints); operators change it and read the report."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from fabriek.core.errors import InvalidRequest, TooLarge
from fabriek.server.schemas import (
    FacilityOut,
    FacilityUpdate,
    ReadingCreate,
    ReadingOut,
    SeriesOut,
)
from fabriek.server.schemas.types import ZONE, Timestamp
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import facility as service

router = APIRouter(prefix="/facility", tags=["facility"])

MAX_CSV_BYTES = 64 * 1024 * 1024  # three years of hours is about 2 MB


def _out(session: Session) -> FacilityOut:
    model = service.get_facility(session)
    return FacilityOut(
        pue=model.pue,
        wue_onsite=model.wue_onsite,
        water_offsite=model.water_offsite,
        carbon_column=model.carbon_column,
        zone=model.zone,
        pue_series=service.pue_series(session),
        intensity=[_series(s) for s in service.series_summary(session)],
        forecasts=[_series(s) for s in service.series_summary(session, forecast=True)],
    )


def _series(s: service.Loaded) -> SeriesOut:
    return SeriesOut(zone=s.zone, rows=s.rows, first=s.first, last=s.last, columns=list(s.columns))


async def _csv(request: Request) -> str:
    """The body, read as it arrives (these routes are in edge.STREAMING: the operator is known
    before a byte of it is kept) and refused past MAX_CSV_BYTES."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CSV_BYTES:
            raise TooLarge(f"the CSV is over {MAX_CSV_BYTES // 2**20} MiB")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the CSV is not UTF-8 text") from None


@router.get("", response_model=FacilityOut)
def get(actor: ActorDep, runtime: RuntimeDep) -> FacilityOut:
    with runtime.reading() as session:
        return _out(session)


@router.patch("", response_model=FacilityOut)
def update(body: FacilityUpdate, actor: ActorDep, runtime: RuntimeDep) -> FacilityOut:
    """Operators: change the PUE, water factors, carbon column or grid zone."""
    with runtime.transaction() as session:
        service.set_facility(session, actor=actor, now=runtime.clock(), **body.model_dump())
        return _out(session)


@router.put("/pue", response_model=FacilityOut)
async def load_pue(request: Request, actor: ActorDep, runtime: RuntimeDep) -> FacilityOut:
    """Operators: replace the PUE series (CSV: from, pue)."""
    text = await _csv(request)
    with runtime.transaction() as session:
        service.load_pue(session, actor=actor, text=text, now=runtime.clock())
        return _out(session)


@router.post("/carbon", response_model=SeriesOut, status_code=201)
async def load_carbon(
    request: Request,
    actor: ActorDep,
    runtime: RuntimeDep,
    zone: Annotated[str, Query(max_length=16, json_schema_extra={"pattern": ZONE})] = "NL",
    forecast: bool = False,
) -> SeriesOut:
    """Operators: load an hourly carbon intensity series (Electricity Maps' CSV, or hour,
    direct_g_per_kwh, life_cycle_g_per_kwh), measured or a forecast; it replaces the hours it
    covers. A bad row loads nothing."""
    text = await _csv(request)
    with runtime.transaction() as session:
        loaded = service.load_intensity(
            session, actor=actor, text=text, zone=zone, forecast=forecast, now=runtime.clock()
        )
    return _series(loaded)


@router.get("/readings", response_model=list[ReadingOut])
def readings(actor: ActorDep, runtime: RuntimeDep) -> list[ReadingOut]:
    """Operators: the facility's meter readings entered so far."""
    with runtime.reading() as session:
        return [ReadingOut(**asdict(r)) for r in service.list_readings(session, actor=actor)]


@router.post("/readings", response_model=ReadingOut, status_code=201)
def add_reading(body: ReadingCreate, actor: ActorDep, runtime: RuntimeDep) -> ReadingOut:
    """Operators: the building's meters over a period (one entry per period)."""
    with runtime.transaction() as session:
        reading = service.add_reading(
            session, actor=actor, now=runtime.clock(), **body.model_dump()
        )
    return ReadingOut(**asdict(reading))


@router.get(
    "/report",
    response_model=None,
    responses={
        200: {
            "description": "One entry per period: JSON, or CSV with format=csv.",
            "content": {"application/json": {}, "text/csv": {}},
        }
    },
)
def report(
    actor: ActorDep,
    runtime: RuntimeDep,
    start: Annotated[Timestamp, Query(alias="from")],
    end: Annotated[Timestamp, Query(alias="to")],
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Operators: per period, PUE, WUE, renewable energy factor and energy reuse factor (EED
    art. 12, Delegated Regulation (EU) 2024/1364), with the jobs' measured IT energy beside."""
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequest("from and to need a time zone (e.g. 2026-01-01T00:00Z)")
    with runtime.reading() as session:
        rows = service.facility_report(session, actor=actor, start=start, end=end)
    if format == "csv":
        return Response(service.report_csv(rows), media_type="text/csv")
    return Response(json.dumps(rows), media_type="application/json")
