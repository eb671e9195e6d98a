"""API schemas: what goes over the wire. Built from domain objects, never from database rows."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fabriek.core.calls import ApplicationState, CallMode
from fabriek.core.jobs import Job, JobState
from fabriek.core.tenancy import (
    Eligibility,
    Identity,
    Organisation,
    OrgKind,
    OrgRole,
    PoolInfo,
    Project,
    ProjectRole,
    Token,
    User,
)

if TYPE_CHECKING:
    from fabriek.server.services.partitions import FactoryNow, PartitionNow


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    version: str
    database: str
    backend: str
    workdir_max_bytes: int = Field(description="Largest workdir an upload may unpack to.")
    api_processes: int = Field(description="Processes serving this API.")


class MembershipOut(BaseModel):
    name: str
    role: str
    organisation: str | None = Field(None, description="A project's organisation.")


class Me(BaseModel):
    id: int
    name: str
    is_operator: bool
    is_reviewer: bool
    organisations: list[MembershipOut] = Field(
        default_factory=list, description="The organisations you belong to, with your role."
    )
    projects: list[MembershipOut] = Field(
        default_factory=list, description="The projects you are a member of, with your role."
    )
    token: TokenOut | None = Field(None, description="The token this request came with.")

    @classmethod
    def of(cls, me: Identity) -> Me:
        return cls(
            id=me.user_id,
            name=me.user.name,
            is_operator=me.user.is_operator,
            is_reviewer=me.user.is_reviewer,
            organisations=[MembershipOut(name=n, role=r) for n, r in me.organisations],
            projects=[MembershipOut(name=n, role=r, organisation=o) for n, o, r in me.projects],
            token=TokenOut.of(me.token) if me.token else None,
        )


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A short name to recognise the job by.")
    project: str | None = Field(
        None,
        description="The project the job runs in; default: your only project, else 'default' "
        "if you are a member of it (else the error names your projects).",
    )
    argv: list[str] = Field(description="The command and its arguments, run without a shell.")
    cpus: int = Field(1, description="CPU cores (on each node).")
    memory_bytes: int | None = Field(
        None,
        description="Memory in bytes (on each node); default: 2 GiB, or all a node of the "
        "partition has where that is less.",
    )
    gpus: int = Field(0, description="GPUs (on each node).")
    nodes: int = Field(1, description="Nodes, each with the CPUs, memory and GPUs above.")
    partition: str | None = Field(
        None, description="Run it in this partition; default: wherever the engine finds room."
    )
    time_limit_s: int = Field(3600, description="Wall-clock limit in seconds.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    workdir: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="SHA-256 of an uploaded workdir, or none."
    )
    allocation: int | None = Field(
        None,
        ge=1,
        le=2**63 - 1,
        description="Charge it to this allocation of the project: it holds GPUs x time limit "
        "until it ends, then pays GPUs x wall time.",
    )
    preemptible: bool = Field(
        False,
        description="May borrow idle GPUs beyond its pool's guarantee, and be stopped (SIGTERM, "
        "a grace period, requeued keeping its place) when their pool reclaims them. Jobs "
        "without an allocation are always preemptible.",
    )
    deadline: AwareDatetime | None = Field(
        None,
        description="It must end by then; the engine may hold it back for the hours with the "
        "lowest forecast carbon intensity. Needs time_limit_s.",
    )
    flexible_s: int | None = Field(
        None,
        description="It may start up to this many seconds late (a deadline of now + this + "
        "time_limit_s). Needs time_limit_s.",
    )
    priority: int = Field(
        0,
        description="Orders jobs of equal fair share, higher first (-1000 to 1000). Anyone may "
        "lower their own jobs' priority; only operators raise it above 0.",
    )


class ResourcesOut(BaseModel):
    cpus: int
    memory_bytes: int
    gpus: int


class JobEventOut(BaseModel):
    at: datetime
    from_state: JobState | None
    to_state: JobState
    actor: str
    reason: str | None


class UsageOut(BaseModel):
    wall_s: float | None
    cpu_s: float | None
    max_rss_bytes: int | None
    gpu_s: float | None


class EnergyOut(BaseModel):
    joules: float
    kwh: float
    method: str = Field(description="How it was measured, or from what it was estimated.")
    measured: bool = Field(description="False: an estimate.")


class FootprintOut(BaseModel):
    it_kwh: float = Field(description="What its GPUs, CPUs and memory used (energy above).")
    facility_kwh: float = Field(description="IT energy x the facility's PUE.")
    water_l: float = Field(description="IT energy x (on-site WUE + PUE x off-site water).")
    carbon_kg: float | None = Field(description="Facility energy x each hour's grid intensity.")
    carbon_saved_kg: float | None = Field(
        description="Held back for a greener hour: the carbon that saved against starting at once."
    )
    note: str | None = Field(description="Which grid intensity was used.")


class JobOut(BaseModel):
    id: int
    name: str
    project: str
    user: str
    state: JobState
    argv: list[str]
    resources: ResourcesOut = Field(description="On each of its nodes.")
    nodes: int = 1
    partition: str | None = Field(None, description="The partition it asked for, if any.")
    time_limit_s: int
    workdir: str | None
    backend: str = Field(description="The partition it was admitted to (empty before that).")
    submitted_at: datetime
    admitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    cancel_requested: bool
    gpu_ids: list[int]
    exit_code: int | None
    signal: int | None
    usage: UsageOut
    queue_position: int | None = Field(
        None,
        description="Jobs of its pool waiting since before it (the engine orders them by "
        "fair share, so this is a guide, not a promise).",
    )
    allocation: int | None = None
    hold_gpu_hours: float | None = Field(
        None, description="Held from the allocation until it ends."
    )
    charged_gpu_hours: float | None = Field(None, description="Charged when it ended.")
    pool: str | None = Field(None, description="The pool of its allocation; none without one.")
    preemptible: bool = False
    borrowed: bool = Field(False, description="Runs on GPUs beyond its pool's guarantee.")
    preempting: bool = Field(False, description="Asked to stop for a reclaim; still ending.")
    preemptions: int = Field(0, description="Times it was preempted and requeued.")
    priority: int = 0
    energy: dict[str, EnergyOut] = Field(
        default_factory=dict,
        description="IT energy per component (gpu, cpu, dram) over all its runs; empty until it "
        "has ended, or where nothing was metered.",
    )
    deadline: datetime | None = None
    green_start_at: datetime | None = Field(
        None, description="Held back for a greener hour: the start green scheduling chose."
    )
    footprint: FootprintOut | None = Field(
        None, description="Facility energy, water and carbon, accounted when it ended."
    )
    estimated_start_at: datetime | None = Field(
        None,
        description="The start the admission engine reserved for it (when running jobs end by "
        "their time limits); set for the first waiting job of each pool.",
    )
    events: list[JobEventOut] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            name=job.name,
            project=job.project,
            user=job.user,
            state=job.state,
            argv=job.argv,
            resources=ResourcesOut(
                cpus=job.resources.cpus,
                memory_bytes=job.resources.memory_bytes,
                gpus=job.resources.gpus,
            ),
            nodes=job.nodes,
            partition=job.partition,
            time_limit_s=job.time_limit_s,
            workdir=job.workdir_digest,
            backend=job.backend,
            submitted_at=job.submitted_at,
            admitted_at=job.admitted_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            reason=job.reason,
            cancel_requested=job.cancel_requested,
            gpu_ids=job.gpu_ids,
            exit_code=job.exit_code,
            signal=job.signal,
            usage=UsageOut(
                wall_s=job.wall_s, cpu_s=job.cpu_s, max_rss_bytes=job.max_rss_bytes, gpu_s=job.gpu_s
            ),
            queue_position=job.queue_position,
            allocation=job.allocation_id,
            hold_gpu_hours=job.hold_gpu_hours,
            charged_gpu_hours=job.charged_gpu_hours,
            pool=job.pool,
            preemptible=job.preemptible,
            borrowed=job.borrowed,
            preempting=job.preempting,
            preemptions=job.preemptions,
            priority=job.priority,
            deadline=job.deadline,
            green_start_at=job.green_start_at,
            footprint=None
            if job.facility_kwh is None
            else FootprintOut(
                it_kwh=sum(e.joules for e in job.energy.values()) / 3.6e6,
                facility_kwh=job.facility_kwh,
                water_l=job.water_l or 0.0,
                carbon_kg=job.carbon_kg,
                carbon_saved_kg=job.carbon_saved_kg,
                note=job.carbon_note,
            ),
            energy={
                component: EnergyOut(
                    joules=e.joules, kwh=e.joules / 3.6e6, method=e.method, measured=e.measured
                )
                for component, e in job.energy.items()
            },
            estimated_start_at=job.estimated_start_at,
            events=[
                JobEventOut(
                    at=e.at,
                    from_state=e.from_state,
                    to_state=e.to_state,
                    actor=e.actor,
                    reason=e.reason,
                )
                for e in job.events
            ],
        )


class WorkdirOut(BaseModel):
    digest: str
    size_bytes: int
    unpacked_bytes: int
    files: int


# --- tenancy --------------------------------------------------------------------------------------
class OrganisationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Short handle: lower-case letters, digits and '-' (e.g. rug).")
    display_name: str = Field(description="Full name, e.g. University of Groningen.")
    kind: OrgKind
    country: str | None = Field(None, description="ISO 3166-1 alpha-2, e.g. NL.")
    region: str | None = Field(None, description="NUTS code, e.g. NL11 (Groningen).")


class OrganisationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: str | None = None
    kind: OrgKind | None = None
    country: str | None = None
    region: str | None = None


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verified: bool = True


class OrganisationOut(BaseModel):
    name: str
    display_name: str
    kind: OrgKind
    country: str | None
    region: str | None
    verified: bool
    verified_at: datetime | None
    verified_by: str | None
    created_at: datetime
    my_role: OrgRole | None = Field(description="Your role in it (none for an operator outside).")

    @classmethod
    def of(cls, o: Organisation) -> OrganisationOut:
        return cls(
            name=o.name,
            display_name=o.display_name,
            kind=o.kind,
            country=o.country,
            region=o.region,
            verified=o.verified,
            verified_at=o.verified_at,
            verified_by=o.verified_by,
            created_at=o.created_at,
            my_role=o.my_role,
        )


class OrgMemberSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: OrgRole = OrgRole.MEMBER


class ProjectMemberSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: ProjectRole = ProjectRole.MEMBER


class MemberOut(BaseModel):
    user: str
    role: str


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    organisation: str


class ProjectOut(BaseModel):
    name: str
    organisation: str
    created_at: datetime
    my_role: ProjectRole | None

    @classmethod
    def of(cls, p: Project) -> ProjectOut:
        return cls(
            name=p.name, organisation=p.organisation, created_at=p.created_at, my_role=p.my_role
        )


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    is_operator: bool = False
    is_reviewer: bool = False
    token_days: int = Field(90, description="Lifetime of the user's first token, in days.")


class UserRoles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    is_operator: bool | None = None
    is_reviewer: bool | None = None


class UserOut(BaseModel):
    name: str
    is_operator: bool
    is_reviewer: bool
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(
            name=u.name,
            is_operator=u.is_operator,
            is_reviewer=u.is_reviewer,
            created_at=u.created_at,
        )


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    days: int = Field(90, description="Lifetime in days (1-366).")
    user: str | None = Field(None, max_length=128, description="Operators: whose (default: yours).")


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str = Field(description="The first characters, to recognise it by.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, t: Token) -> TokenOut:
        return cls(
            id=t.id,
            user=t.user,
            name=t.name,
            prefix=t.prefix,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="The secret. Shown only now: keep it.")


class UserCreated(UserOut):
    token: str = Field(description="The user's first token. Shown only now: hand it over.")


# --- pools ----------------------------------------------------------------------------------------
class EligibilityIO(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verified: bool = Field(False, description="Only organisations an operator verified.")
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


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    display_name: str
    guarantee: float = Field(description="Fraction of each GPU type it is owed, e.g. 0.25.")
    borrow_limit: float | None = Field(
        None, description="How far beyond its guarantee it may borrow idle GPUs; none: no limit."
    )
    lend_limit: float = Field(1.0, description="Fraction of its guarantee it lends while idle.")
    eligibility: EligibilityIO = Field(default_factory=EligibilityIO)


class PoolUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: str | None = None
    guarantee: float | None = None
    borrow_limit: float | None = None
    no_borrow_limit: bool = False
    lend_limit: float | None = None
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
class AllocationGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str
    pool: str
    gpu_hours: float = Field(description="The budget, in GPU-hours.")
    days: int = Field(description="How long it lasts.")
    starts_at: AwareDatetime | None = Field(None, description="When it begins; default now.")
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
class CallCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str
    pool: str
    mode: CallMode
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    total_gpu_hours: float
    max_gpu_hours: float = Field(description="At most this much per application.")
    allocation_days: int = Field(365, description="How long the allocations it grants last.")
    reviewers: int | None = Field(None, description="Reviews a decision needs (by mode if none).")
    threshold: float = Field(3.0, description="Mean score (1-5) an application needs.")
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


class ApplicationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call: str
    project: str
    gpu_hours: float
    title: str
    summary: str = ""
    submit: bool = Field(True, description="Submit at once; false keeps a draft.")


class ReviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(description="1 (poor) to 5 (excellent).")
    comment: str


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


# --- reports ------------------------------------------------------------------------------------------
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
class FacilityUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pue: float | None = Field(None, description="Power usage effectiveness, 1 or more.")
    wue_onsite: float | None = Field(None, description="Litres of water per IT kWh, on site.")
    water_offsite: float | None = Field(
        None, description="Litres of water per kWh of electricity, at the power plants."
    )
    carbon_column: Literal["life_cycle", "direct"] | None = Field(
        None, description="Which grid intensity carbon accounting uses."
    )
    zone: str | None = Field(None, description="The grid zone of the series, e.g. NL.")


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


class ReadingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    total_kwh: float = Field(description="The facility's total energy in the period.")
    it_kwh: float = Field(description="Its IT equipment's energy.")
    water_m3: float = Field(description="Water taken in.")
    renewable_kwh: float = Field(0.0, description="Renewable energy used.")
    reused_heat_kwh: float = Field(0.0, description="Heat delivered for reuse.")


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


# --- the factory now (`fabriek partitions`) ------------------------------------------------------
class PartitionOut(BaseModel):
    name: str
    kind: Literal["local", "slurm"] = Field(description="local: the server's machine.")
    nodes: int
    nodes_idle: int = Field(description="Nodes with nothing running.")
    nodes_mixed: int = Field(description="Nodes with some CPUs free.")
    nodes_allocated: int = Field(description="Nodes with every CPU taken.")
    per_node: ResourcesOut
    gpu_type: str
    billing_weight: float = Field(description="GPU-hours charged per GPU-hour used here.")
    cpus_busy: int
    memory_busy_bytes: int
    gpus_busy: int
    running_jobs: int = Field(description="Admitted and running jobs.")
    pending_jobs: int = Field(description="Waiting jobs that asked for this partition by name.")

    @classmethod
    def of(cls, p: PartitionNow) -> PartitionOut:
        r = p.capacity.resources
        return cls(
            name=p.name,
            kind=p.kind,  # type: ignore[arg-type]
            nodes=len(p.nodes),
            nodes_idle=p.count("idle"),
            nodes_mixed=p.count("mixed"),
            nodes_allocated=p.count("allocated"),
            per_node=ResourcesOut(cpus=r.cpus, memory_bytes=r.memory_bytes, gpus=r.gpus),
            gpu_type=p.capacity.gpu_type,
            billing_weight=p.capacity.billing_weight,
            cpus_busy=p.cpus_busy,
            memory_busy_bytes=p.memory_busy_bytes,
            gpus_busy=p.gpus_busy,
            running_jobs=p.running_jobs,
            pending_jobs=p.pending_jobs,
        )


class PoolQueueOut(BaseModel):
    pool: str
    running_jobs: int
    running_gpus: int
    pending_jobs: int
    pending_gpus: int = Field(description="GPUs the waiting jobs ask for, all nodes together.")


class FactoryOut(BaseModel):
    """Counts only: no job, user or project of anyone is named."""

    partitions: list[PartitionOut]
    pools: list[PoolQueueOut]

    @classmethod
    def of(cls, f: FactoryNow) -> FactoryOut:
        return cls(
            partitions=[PartitionOut.of(p) for p in f.partitions],
            pools=[
                PoolQueueOut(
                    pool=q.pool,
                    running_jobs=q.running_jobs,
                    running_gpus=q.running_gpus,
                    pending_jobs=q.pending_jobs,
                    pending_gpus=q.pending_gpus,
                )
                for q in f.pools
            ],
        )
