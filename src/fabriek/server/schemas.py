"""API schemas: what goes over the wire. Built from domain objects, never from database rows."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fabriek.core.jobs import Job, JobState


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


class Me(BaseModel):
    id: int
    name: str
    is_admin: bool


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A short name to recognise the job by.")
    project: str = Field("default", description="The project the job runs in.")
    argv: list[str] = Field(description="The command and its arguments, run without a shell.")
    cpus: int = Field(1, description="CPU cores.")
    memory_bytes: int = Field(2 * 1024**3, description="Memory in bytes.")
    gpus: int = Field(0, description="GPUs.")
    time_limit_s: int = Field(3600, description="Wall-clock limit in seconds.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    workdir: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="SHA-256 of an uploaded workdir, or none."
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


class JobOut(BaseModel):
    id: int
    name: str
    project: str
    user: str
    state: JobState
    argv: list[str]
    resources: ResourcesOut
    time_limit_s: int
    workdir: str | None
    backend: str
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
    queue_position: int | None = Field(None, description="Pending jobs ahead of this one.")
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
