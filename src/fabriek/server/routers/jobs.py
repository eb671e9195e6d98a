from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from fabriek.core.jobs import DEFAULT_MEMORY_BYTES, JobRequest, JobState, Resources
from fabriek.server.schemas import JobOut, JobSubmit
from fabriek.server.schemas.types import PROJECT, USER, Timestamp, id_path
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import job_files
from fabriek.server.services import jobs as service

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_LOG_CHUNK = 1024 * 1024
# One job's command and environment may be a MiB (what exec takes): a listing of 10,000 such
# jobs would be 10 GB. An answer stops here instead; the rest is a narrower question away.
MAX_LIST_BYTES = 16 * 1024 * 1024
# Bounded, so that an absurd id or offset is a 422, not an overflow in the database or in seek().
JobId = Annotated[int, id_path("Job")]


def _json(model: BaseModel | list[JobOut], status_code: int = 200) -> Response:
    """Serialise once: returning a model would make FastAPI validate it again against response_model."""
    if isinstance(model, list):
        body = b"[" + b",".join(m.model_dump_json().encode() for m in model) + b"]"
    else:
        body = model.model_dump_json().encode()
    return Response(body, status_code=status_code, media_type="application/json")


@router.post("", response_model=JobOut, status_code=201)
def submit(body: JobSubmit, actor: ActorDep, runtime: RuntimeDep) -> Response:
    """Queue a job. It starts when the admission engine finds room for it."""
    request = JobRequest(
        name=body.name,
        project=body.project,
        argv=body.argv,
        resources=Resources(
            body.cpus,
            DEFAULT_MEMORY_BYTES if body.memory_bytes is None else body.memory_bytes,
            body.gpus,
        ),
        nodes=body.nodes,
        partition=body.partition,
        network=body.network,
        time_limit_s=body.time_limit_s,
        env=body.env,
        workdir_digest=body.workdir,
        allocation_id=body.allocation,
        preemptible=body.preemptible,
        priority=body.priority,
        deadline=body.deadline,
        flexible_s=body.flexible_s,
        time_limit_given="time_limit_s" in body.model_fields_set,
        memory_given=body.memory_bytes is not None,
    )
    with runtime.transaction() as session:
        job = service.submit_job(
            session,
            actor=actor,
            request=request,
            partitions=runtime.partitions(),
            now=runtime.clock(),
            require_allocation=runtime.settings.require_allocation,
            disk_quota_bytes=runtime.settings.project_disk_quota_bytes,
        )
    runtime.wake(submission=True)
    return _json(JobOut.of(job), 201)


@router.get("", response_model=list[JobOut])
def list_jobs(
    actor: ActorDep,
    runtime: RuntimeDep,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states.")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    project: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            json_schema_extra={"pattern": PROJECT},
            description="Only jobs of this project.",
        ),
    ] = None,
    user: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            json_schema_extra={"pattern": USER},
            description="Only jobs this user submitted.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        Query(max_length=256, description="Only jobs of this name; `*` matches any text."),
    ] = None,
    since: Annotated[
        Timestamp | None, Query(description="Only jobs submitted at or after this time.")
    ] = None,
    until: Annotated[
        Timestamp | None, Query(description="Only jobs submitted before this time.")
    ] = None,
) -> Response:
    """The newest jobs you may see, newest first. An answer holds at most MAX_LIST_BYTES: where
    more would have fitted `limit`, header X-Fabriek-More says so (narrow the filters)."""
    parts, size, more = [], 2, False
    with runtime.reading() as session:
        for job in service.iter_jobs(
            session,
            actor=actor,
            states=state or (),
            limit=limit,
            filters=service.JobFilters(
                project=project, user=user, name=name, since=since, until=until
            ),
        ):
            part = JobOut.of(job).model_dump_json().encode()
            size += len(part) + 1
            if size > MAX_LIST_BYTES and parts:
                more = True
                break
            parts.append(part)
    headers = {"X-Fabriek-More": "true"} if more else None
    return Response(b"[" + b",".join(parts) + b"]", media_type="application/json", headers=headers)


@router.get("/{job_id}", response_model=JobOut)
def get(job_id: JobId, actor: ActorDep, runtime: RuntimeDep) -> Response:
    """Everything known about one job: its state, why it waits, what it used, its history."""
    with runtime.reading() as session:
        job = service.get_job(session, actor=actor, job_id=job_id)
    return _json(JobOut.of(job))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: JobId, actor: ActorDep, runtime: RuntimeDep) -> Response:
    with runtime.transaction() as session:
        job = service.cancel_job(session, actor=actor, job_id=job_id, now=runtime.clock())
    runtime.wake()
    return _json(JobOut.of(job))


@router.get(
    "/{job_id}/logs",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def logs(
    job_id: JobId,
    actor: ActorDep,
    runtime: RuntimeDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = MAX_LOG_CHUNK,
    stream: Annotated[
        Literal["stdout", "stderr"],
        Query(
            description="Which stream; a job run before they were kept apart has both in stdout."
        ),
    ] = "stdout",
    tail: Annotated[
        int | None, Query(ge=0, le=1_000_000, description="Only the last this many lines.")
    ] = None,
    since: Annotated[
        Timestamp | None, Query(description="Only the lines written after this time.")
    ] = None,
) -> Response:
    """The job's stdout (or stderr) from byte `offset`, or later where `tail` or `since` start
    later. Headers: X-Fabriek-Offset (where the bytes start), X-Fabriek-Next-Offset (where to
    continue) and X-Fabriek-Job-State (follow until it is final and no bytes come)."""
    with runtime.reading() as session:
        row = service.job_row_for_files(session, actor=actor, job_id=job_id)
        state, handle, where = row.state, row.handle, row.backend
        removed_at = row.files_removed_at
    data, start = job_files.read_log(
        runtime.backend_for(where),
        job_id=job_id,
        handle=handle,
        stream=stream,
        offset=offset,
        limit=limit,
        tail=tail,
        since=since,
        removed_at=removed_at,
    )
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Fabriek-Offset": str(start),
            "X-Fabriek-Next-Offset": str(start + len(data)),
            "X-Fabriek-Job-State": state,
        },
    )


@router.get(
    "/{job_id}/outputs",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
def outputs(job_id: JobId, actor: ActorDep, runtime: RuntimeDep) -> StreamingResponse:
    """The files the job wrote to $FABRIEK_OUTPUT_DIR, as a gzip'd tar archive made while it is
    sent. 413 outputs_too_large past the server's limits, 410 files_removed once the retention
    policy removed them."""
    with runtime.reading() as session:
        row = service.job_row_for_files(session, actor=actor, job_id=job_id)
        handle, where, removed_at = row.handle, row.backend, row.files_removed_at
    settings = runtime.settings
    archive = job_files.outputs_archive(
        runtime.backend_for(where),
        job_id=job_id,
        handle=handle,
        removed_at=removed_at,
        max_bytes=settings.outputs_download_max_bytes,
        max_entries=settings.outputs_download_max_entries,
    )
    return StreamingResponse(
        archive,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-outputs.tar.gz"'},
    )
