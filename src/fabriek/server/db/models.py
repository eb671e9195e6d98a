"""Database rows. Never returned from the API: services convert them to domain objects or schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Platform roles: operators run the factory, reviewers judge applications to access calls.
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    is_reviewer: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class OrganisationRow(Base):
    """A tenant: a company, university, institute, government body or health organisation."""

    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # short handle, used in URLs
    display_name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    country: Mapped[str | None] = mapped_column(String(2))  # ISO 3166-1 alpha-2
    region: Mapped[str | None] = mapped_column(String(5))  # NUTS code, e.g. NL11
    verified_at: Mapped[datetime | None]
    verified_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]


class OrganisationMemberRow(Base):
    __tablename__ = "organisation_members"

    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # owner | manager | member


class TokenRow(Base):
    """An API token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    created_at: Mapped[datetime]
    # What its jobs' directories hold on disk, as the retention step last added it up (for the
    # disk quota; None: not measured, no quota set).
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Its POSIX identity (uid = gid), from FABRIEK_UID_RANGE; None only for a project made before
    # identities were kept, until the server's start gives it one (services/identities.py).
    uid: Mapped[int | None] = mapped_column(Integer, unique=True)
    # The most network its jobs may have (core.identity.Network), locked by an operator; None:
    # what the partition allows.
    network_limit: Mapped[str | None] = mapped_column(String(16))


class ProjectMemberRow(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(32))  # manager | member


class PoolRow(Base):
    """A share of the factory's capacity (see docs/scheduling.md); operators configure them."""

    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(256))
    guarantee: Mapped[float] = mapped_column(Float)  # fraction of each GPU type
    borrow_limit: Mapped[float | None] = mapped_column(Float)  # None: no limit
    lend_limit: Mapped[float] = mapped_column(Float)
    eligibility: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class AllocationRow(Base):
    """A project's budget of GPU-hours in a pool for a period.

    held: what accepted, unfinished jobs may still use (GPUs x time limit each); charged: what
    finished jobs used. gpu_hours - held - charged is what new jobs may ask for."""

    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"), index=True)
    gpu_hours: Mapped[float] = mapped_column(Float)
    held_gpu_hours: Mapped[float] = mapped_column(Float)
    charged_gpu_hours: Mapped[float] = mapped_column(Float)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    granted_by: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class CallRow(Base):
    """An access call into a pool (EuroHPC-style modes: playground, fast_lane, large_scale)."""

    __tablename__ = "access_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(256))
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    opens_at: Mapped[datetime]
    closes_at: Mapped[datetime]
    total_gpu_hours: Mapped[float] = mapped_column(Float)
    granted_gpu_hours: Mapped[float] = mapped_column(Float)  # by approved applications
    max_gpu_hours: Mapped[float] = mapped_column(Float)  # per application
    allocation_days: Mapped[int] = mapped_column(Integer)
    reviewers: Mapped[int] = mapped_column(Integer)  # reviews a decision needs
    threshold: Mapped[float] = mapped_column(Float)  # mean score to approve
    eligibility: Mapped[dict[str, Any]]  # on top of the pool's
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class ApplicationRow(Base):
    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("access_calls.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    title: Mapped[str] = mapped_column(String(256))
    summary: Mapped[str] = mapped_column(Text)
    gpu_hours: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    applicant: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    decision: Mapped[str | None] = mapped_column(Text)
    allocation_id: Mapped[int | None] = mapped_column(ForeignKey("allocations.id"))


class ApplicationEventRow(Base):
    """Append-only history of an application: written only by its transition function."""

    __tablename__ = "application_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    at: Mapped[datetime]
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)


class ReviewRow(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("application_id", "reviewer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("applications.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class WorkdirRow(Base):
    """An uploaded workdir archive, stored once by its SHA-256 and shared by the jobs that use it."""

    __tablename__ = "workdirs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    unpacked_bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]


class WorkdirUserRow(Base):
    """Who uploaded a workdir. Identical archives are stored once, but each user sees only their own."""

    __tablename__ = "workdir_users"

    digest: Mapped[str] = mapped_column(ForeignKey("workdirs.digest"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_tidied_at", "tidied_at"),
        Index("ix_jobs_files_kept", "files_removed_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    argv: Mapped[list[Any]]
    env: Mapped[dict[str, Any]]
    cpus: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[int] = mapped_column(Integer)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    workdir_digest: Mapped[str | None] = mapped_column(ForeignKey("workdirs.digest"))
    backend: Mapped[str] = mapped_column(String(32))
    submitted_at: Mapped[datetime]
    admitted_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None]
    handle: Mapped[dict[str, Any] | None]
    gpu_ids: Mapped[list[Any] | None]
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)
    wall_s: Mapped[float | None] = mapped_column(Float)
    cpu_s: Mapped[float | None] = mapped_column(Float)
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_s: Mapped[float | None] = mapped_column(Float)
    allocation_id: Mapped[int | None] = mapped_column(ForeignKey("allocations.id"), index=True)
    hold_gpu_hours: Mapped[float | None] = mapped_column(Float)  # released when it ends
    charged_gpu_hours: Mapped[float | None] = mapped_column(Float)  # GPUs x wall time
    preemptible: Mapped[bool] = mapped_column(Boolean, server_default=false())
    borrowed: Mapped[bool] = mapped_column(Boolean, server_default=false())  # beyond its guarantee
    preemptions: Mapped[int] = mapped_column(Integer, server_default="0")
    preempt_requested_at: Mapped[datetime | None]
    estimated_start_at: Mapped[datetime | None]  # the start the engine reserved for it
    priority: Mapped[int] = mapped_column(Integer, server_default="0")  # after fair share
    # Energy of all its runs, per component; None: not metered. Methods: component ->
    # {"method": words, "measured": bool}.
    gpu_energy_j: Mapped[float | None] = mapped_column(Float)
    cpu_energy_j: Mapped[float | None] = mapped_column(Float)
    dram_energy_j: Mapped[float | None] = mapped_column(Float)
    energy_methods: Mapped[dict[str, Any] | None]
    # Green scheduling: it must end by `deadline`; the engine chose to start it at
    # `green_start_at` (the greenest forecast window), when starting at once would have meant
    # `carbon_at_once_g` g CO2e/kWh on average.
    deadline: Mapped[datetime | None]
    green_start_at: Mapped[datetime | None]
    carbon_at_once_g: Mapped[float | None] = mapped_column(Float)
    # Its footprint, accounted when it ended (core/green.py).
    facility_kwh: Mapped[float | None] = mapped_column(Float)
    water_l: Mapped[float | None] = mapped_column(Float)
    carbon_kg: Mapped[float | None] = mapped_column(Float)
    carbon_saved_kg: Mapped[float | None] = mapped_column(Float)
    # The network it asked for (core.identity.Network); None: its partition's default.
    network: Mapped[str | None] = mapped_column(String(16))
    carbon_note: Mapped[str | None] = mapped_column(Text)
    # Resources above are per node: a job asks for `nodes` nodes with that much on each. It may
    # name a partition; `backend` is the partition it was admitted to (the one it asked for, or
    # the only one, before that), `placement` the partition's nodes the engine counted it on.
    nodes: Mapped[int] = mapped_column(Integer, server_default="1")
    partition: Mapped[str | None] = mapped_column(String(64))
    placement: Mapped[list[Any] | None]
    # Its files (services/retention.py): once it ended, its working copies were removed (unless
    # kept) and its directories measured at `tidied_at`; they hold `disk_bytes` on disk (None:
    # not measured); the retention period removed them all at `files_removed_at`. The system
    # stops a job for `stop_reason` (its project's disk quota): it then ends failed, with it.
    tidied_at: Mapped[datetime | None]
    files_removed_at: Mapped[datetime | None]
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger)
    stop_reason: Mapped[str | None] = mapped_column(Text)


class JobEnergyHourRow(Base):
    """A job's IT energy in one clock hour (UTC): what carbon accounting multiplies by the
    grid's intensity of that hour."""

    __tablename__ = "job_energy_hours"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    joules: Mapped[float] = mapped_column(Float)


class JobEventRow(Base):
    """Append-only history of a job's state: written only by the job transition function."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)


class AuditEventRow(Base):
    """Append-only record of every change a person (or the system) made, and of refused
    attempts. Never updated; ids only grow (a hash chain may follow them: core.audit)."""

    __tablename__ = "audit_events"
    # What `fabriek audit list` filters by, newest first.
    __table_args__ = (Index("ix_audit_events_target", "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]]


class FacilitySettingsRow(Base):
    """The facility model, as operators set it; the newest row holds."""

    __tablename__ = "facility_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pue: Mapped[float] = mapped_column(Float)
    wue_onsite: Mapped[float] = mapped_column(Float)  # L per IT kWh
    water_offsite: Mapped[float] = mapped_column(Float)  # L per kWh of electricity
    carbon_column: Mapped[str] = mapped_column(String(16))
    zone: Mapped[str] = mapped_column(String(16))
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime]


class FacilityPueRow(Base):
    __tablename__ = "facility_pue"

    starts_at: Mapped[datetime] = mapped_column(primary_key=True)
    pue: Mapped[float] = mapped_column(Float)


class GridIntensityRow(Base):
    """Measured hourly carbon intensity of a grid zone (g CO2e/kWh)."""

    __tablename__ = "grid_intensity"

    zone: Mapped[str] = mapped_column(String(16), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    direct: Mapped[float | None] = mapped_column(Float)
    life_cycle: Mapped[float | None] = mapped_column(Float)


class GridForecastRow(Base):
    """Operator-provided forecasts of the same; preferred by green scheduling where present."""

    __tablename__ = "grid_forecast"

    zone: Mapped[str] = mapped_column(String(16), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    direct: Mapped[float | None] = mapped_column(Float)
    life_cycle: Mapped[float | None] = mapped_column(Float)


class FacilityReadingRow(Base):
    """The facility's own meters over a period (EU data-centre reporting, EED art. 12)."""

    __tablename__ = "facility_readings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    total_kwh: Mapped[float] = mapped_column(Float)
    it_kwh: Mapped[float] = mapped_column(Float)
    water_m3: Mapped[float] = mapped_column(Float)
    renewable_kwh: Mapped[float] = mapped_column(Float)
    reused_heat_kwh: Mapped[float] = mapped_column(Float)
    entered_by: Mapped[str] = mapped_column(String(128))
    entered_at: Mapped[datetime]
