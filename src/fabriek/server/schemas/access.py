"""API schemas: pools, allocations, access calls and applications."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from fabriek.core.calls import MAX_SCORE, MIN_SCORE, ApplicationState, CallMode
from fabriek.core.tenancy import (
    Eligibility,
    OrgKind,
    PoolInfo,
)
from fabriek.server.schemas.types import (
    Count,
    Flag,
    Input,
    Label,
    Number,
    ProjectName,
    SlugName,
    Timestamp,
)
from fabriek.server.services.allocations import MAX_DAYS
from fabriek.server.services.calls import MAX_SUMMARY


class EligibilityIO(Input):
    verified: Flag = Field(False, description="Only organisations an operator verified.")
    countries: list[str] = Field(default_factory=list, description="ISO 3166-1 codes; empty: any.")
    regions: list[str] = Field(
        default_factory=list, description="NUTS prefixes, e.g. NL11 or NL1; empty: any."
    )
    kinds: list[OrgKind] = Field(
        default_factory=list, description="Organisation kinds; empty: any."
    )

    def to_domain(self) -> Eligibility:
        return Eligibility(
            verified=self.verified,
            countries=tuple(c.upper() for c in self.countries),
            regions=tuple(r.upper() for r in self.regions),
            kinds=tuple(self.kinds),
        )

    @classmethod
    def of(cls, e: Eligibility) -> EligibilityIO:
        return cls(
            verified=e.verified,
            countries=list(e.countries),
            regions=list(e.regions),
            kinds=list(e.kinds),
        )


class PoolCreate(Input):
    name: SlugName
    display_name: Label
    guarantee: Number = Field(
        description="Fraction of each GPU type it is owed, e.g. 0.25.",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    borrow_limit: Number | None = Field(
        None,
        description="How far beyond its guarantee it may borrow idle GPUs; none: no limit.",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    lend_limit: Number = Field(
        1.0,
        description="Fraction of its guarantee it lends while idle.",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    eligibility: EligibilityIO = Field(default_factory=EligibilityIO)


class PoolUpdate(Input):
    display_name: Label | None = None
    guarantee: Number | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 1})
    borrow_limit: Number | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 1})
    no_borrow_limit: Flag = False
    lend_limit: Number | None = Field(None, json_schema_extra={"minimum": 0, "maximum": 1})
    eligibility: EligibilityIO | None = None


class PoolOut(BaseModel):
    name: str
    display_name: str
    guarantee: float
    borrow_limit: float | None
    lend_limit: float
    eligibility: EligibilityIO
    created_at: datetime

    @classmethod
    def of(cls, p: PoolInfo) -> PoolOut:
        return cls(
            name=p.name,
            display_name=p.display_name,
            guarantee=p.guarantee,
            borrow_limit=p.borrow_limit,
            lend_limit=p.lend_limit,
            eligibility=EligibilityIO.of(p.eligibility),
            created_at=p.created_at,
        )


class PoolEligibilityOut(BaseModel):
    pool: str
    eligible: bool
    why_not: str | None


# --- allocations ------------------------------------------------------------------------------------
class AllocationGrant(Input):
    project: ProjectName
    pool: SlugName
    gpu_hours: Number = Field(
        description="The budget, in GPU-hours.", json_schema_extra={"exclusiveMinimum": 0}
    )
    days: Count = Field(
        description="How long it lasts.", json_schema_extra={"minimum": 1, "maximum": MAX_DAYS}
    )
    starts_at: Timestamp | None = Field(None, description="When it begins; default now.")
    note: str | None = Field(None, max_length=1000)


class AllocationOut(BaseModel):
    id: int
    project: str
    pool: str
    gpu_hours: float
    held_gpu_hours: float = Field(description="Held by accepted jobs that have not ended.")
    charged_gpu_hours: float = Field(description="Used by jobs that ended.")
    left_gpu_hours: float = Field(description="What new jobs may still ask for.")
    starts_at: datetime
    ends_at: datetime
    granted_by: str
    note: str | None


# --- access calls and applications -------------------------------------------------------------------
class CallCreate(Input):
    name: SlugName
    title: Label
    pool: SlugName
    mode: CallMode
    opens_at: Timestamp
    closes_at: Timestamp
    total_gpu_hours: Number = Field(json_schema_extra={"exclusiveMinimum": 0})
    max_gpu_hours: Number = Field(
        description="At most this much per application (and at most the total).",
        json_schema_extra={"exclusiveMinimum": 0},
    )
    allocation_days: Count = Field(
        365,
        description="How long the allocations it grants last.",
        json_schema_extra={"minimum": 1, "maximum": MAX_DAYS},
    )
    reviewers: Count | None = Field(None, description="Reviews a decision needs (by mode if none).")
    threshold: Number = Field(
        3.0,
        description="Mean score (1-5) an application needs.",
        json_schema_extra={"minimum": MIN_SCORE, "maximum": MAX_SCORE},
    )
    eligibility: EligibilityIO = Field(default_factory=EligibilityIO)


class CallOut(BaseModel):
    name: str
    title: str
    pool: str
    mode: CallMode
    opens_at: datetime
    closes_at: datetime
    open: bool
    total_gpu_hours: float
    granted_gpu_hours: float
    max_gpu_hours: float
    allocation_days: int
    reviewers: int
    threshold: float
    eligibility: EligibilityIO
    created_by: str


class ApplicationCreate(Input):
    call: SlugName
    project: ProjectName
    gpu_hours: Number = Field(json_schema_extra={"exclusiveMinimum": 0})
    title: Label
    summary: str = Field("", max_length=MAX_SUMMARY)
    submit: Flag = Field(True, description="Submit at once; false keeps a draft.")


class ReviewCreate(Input):
    score: Count = Field(
        description="1 (poor) to 5 (excellent).",
        json_schema_extra={"minimum": MIN_SCORE, "maximum": MAX_SCORE},
    )
    comment: str = Field(max_length=MAX_SUMMARY, json_schema_extra={"minLength": 1})


class ReviewOut(BaseModel):
    reviewer: str | None = Field(description="Shown to operators only.")
    score: int
    comment: str
    at: datetime


class ApplicationOut(BaseModel):
    id: int
    call: str
    project: str
    title: str
    summary: str
    gpu_hours: float
    state: ApplicationState
    applicant: str
    created_at: datetime
    submitted_at: datetime | None
    decided_at: datetime | None
    decision: str | None
    allocation: int | None
    reviews: list[ReviewOut]
