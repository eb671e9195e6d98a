"""API schemas: jobs and their workdirs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from fabriek.core.identity import Network
from fabriek.core.jobs import (
    ENV_NAME,
    MAX_ARG_STRLEN,
    MAX_ARGV_ITEMS,
    MAX_CPUS,
    MAX_ENV_ITEMS,
    MAX_EXEC_BYTES,
    MAX_FLEXIBLE_S,
    MAX_GPUS,
    MAX_MEMORY_BYTES,
    MAX_NAME_LEN,
    MAX_NODES,
    MAX_PRIORITY,
    MAX_TIME_LIMIT_S,
    PARTITION_NAME,
    Job,
    JobState,
)
from fabriek.server.schemas.types import Count, Flag, Id, Input, ProjectName, Timestamp


class JobSubmit(Input):
    name: str = Field(
        description="A short name to recognise the job by.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_NAME_LEN},
    )

    project: ProjectName | None = Field(
        None,
        description="The project the job runs in; default: your only project, else 'default' "
        "if you are a member of it (else the error names your projects).",
    )
    argv: list[Annotated[str, Field(max_length=MAX_ARG_STRLEN)]] = Field(
        json_schema_extra={
            "minItems": 1,
            "maxItems": MAX_ARGV_ITEMS,
            "prefixItems": [{"type": "string", "minLength": 1}],  # the command itself
        },
        description="The command and its arguments, run without a shell. With env, at most "
        f"{MAX_EXEC_BYTES:,} bytes (UTF-8, one NUL each), each at most {MAX_ARG_STRLEN:,}.",
    )
    cpus: Count = Field(
        1,
        description="CPU cores (on each node).",
        json_schema_extra={"minimum": 1, "maximum": MAX_CPUS},
    )
    memory_bytes: Count | None = Field(
        None,
        description="Memory in bytes (on each node); default: 2 GiB, or all a node of the "
        "partition has where that is less.",
        json_schema_extra={"minimum": 1024 * 1024, "maximum": MAX_MEMORY_BYTES},
    )
    gpus: Count = Field(
        0, description="GPUs (on each node).", json_schema_extra={"minimum": 0, "maximum": MAX_GPUS}
    )
    nodes: Count = Field(
        1,
        description="Nodes, each with the CPUs, memory and GPUs above.",
        json_schema_extra={"minimum": 1, "maximum": MAX_NODES},
    )
    partition: str | None = Field(
        None,
        description="Run it in this partition; default: wherever the engine finds room.",
        json_schema_extra={"pattern": f"^{PARTITION_NAME.pattern}$"},
    )
    time_limit_s: Count = Field(
        3600,
        description="Wall-clock limit in seconds.",
        json_schema_extra={"minimum": 1, "maximum": MAX_TIME_LIMIT_S},
    )
    env: dict[
        Annotated[str, Field(pattern=f"^{ENV_NAME.pattern}$")],
        Annotated[str, Field(max_length=MAX_ARG_STRLEN)],
    ] = Field(
        default_factory=dict,
        json_schema_extra={"maxProperties": MAX_ENV_ITEMS, "additionalProperties": False},
        description="Extra environment variables (not FABRIEK_*, not CUDA_VISIBLE_DEVICES).",
    )
    workdir: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="SHA-256 of an uploaded workdir, or none."
    )
    allocation: Id | None = Field(
        None,
        description="Charge it to this allocation of the project: it holds GPUs x time limit "
        "until it ends, then pays GPUs x wall time.",
    )
    preemptible: Flag = Field(
        False,
        description="May borrow idle GPUs beyond its pool's guarantee, and be stopped (SIGTERM, "
        "a grace period, requeued keeping its place) when their pool reclaims them. Jobs "
        "without an allocation are always preemptible.",
    )
    deadline: Timestamp | None = Field(
        None,
        description="It must end by then; the engine may hold it back for the hours with the "
        "lowest forecast carbon intensity. Needs time_limit_s.",
    )
    flexible_s: Count | None = Field(
        None,
        description="It may start up to this many seconds late (a deadline of now + this + "
        "time_limit_s). Needs time_limit_s.",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_FLEXIBLE_S},
    )
    priority: Count = Field(
        0,
        description="Orders jobs of equal fair share, higher first (-1000 to 1000). Anyone may "
        "lower their own jobs' priority; only operators raise it above 0.",
        json_schema_extra={"minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
    )
    network: Network | None = Field(
        None,
        description="What it may reach: none (nothing, not even itself), loopback (only "
        "itself), host (the machine's network). Default: its partition's default, lowered to "
        "its project's lock. More than the project's lock or the partition allows is refused "
        "(403 network_not_allowed).",
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
    network: Network | None = Field(
        None,
        description="What it may reach (none, loopback, host): as asked until it starts (none "
        "given: its partition's default, decided then); from its start, what it got.",
    )
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
            network=job.network,
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
