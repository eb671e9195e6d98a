"""Access calls, applications and reviews. Rules of who may do what: services/calls.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from fabriek.server.schemas import (
    ApplicationCreate,
    ApplicationOut,
    CallCreate,
    CallOut,
    EligibilityIO,
    ReviewCreate,
    ReviewOut,
)
from fabriek.server.schemas.types import SLUG, id_path
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import calls as service

calls = APIRouter(prefix="/calls", tags=["calls"])
applications = APIRouter(prefix="/applications", tags=["calls"])

CallName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": SLUG})]
ApplicationId = Annotated[int, id_path("Application")]


def _call(c: service.Call, runtime) -> CallOut:  # type: ignore[no-untyped-def]
    return CallOut(
        name=c.name,
        title=c.title,
        pool=c.pool,
        mode=c.mode,
        opens_at=c.opens_at,
        closes_at=c.closes_at,
        open=c.is_open(runtime.clock()),
        total_gpu_hours=c.total_gpu_hours,
        granted_gpu_hours=c.granted_gpu_hours,
        max_gpu_hours=c.max_gpu_hours,
        allocation_days=c.allocation_days,
        reviewers=c.reviewers,
        threshold=c.threshold,
        eligibility=EligibilityIO.of(c.eligibility),
        created_by=c.created_by,
    )


def _application(a: service.Application) -> ApplicationOut:
    return ApplicationOut(
        id=a.id,
        call=a.call,
        project=a.project,
        title=a.title,
        summary=a.summary,
        gpu_hours=a.gpu_hours,
        state=a.state,
        applicant=a.applicant,
        created_at=a.created_at,
        submitted_at=a.submitted_at,
        decided_at=a.decided_at,
        decision=a.decision,
        allocation=a.allocation_id,
        reviews=[
            ReviewOut(reviewer=r.reviewer, score=r.score, comment=r.comment, at=r.at)
            for r in a.reviews
        ],
    )


@calls.post("", response_model=CallOut, status_code=201)
def create_call(body: CallCreate, actor: ActorDep, runtime: RuntimeDep) -> CallOut:
    """Operators: open an access call into a pool."""
    with runtime.transaction() as session:
        call = service.create_call(
            session,
            actor=actor,
            name=body.name,
            title=body.title,
            pool=body.pool,
            mode=body.mode,
            opens_at=body.opens_at,
            closes_at=body.closes_at,
            total_gpu_hours=body.total_gpu_hours,
            max_gpu_hours=body.max_gpu_hours,
            allocation_days=body.allocation_days,
            reviewers=body.reviewers,
            threshold=body.threshold,
            eligibility=body.eligibility.to_domain(),
            now=runtime.clock(),
        )
    return _call(call, runtime)


@calls.get("", response_model=list[CallOut])
def list_calls(actor: ActorDep, runtime: RuntimeDep) -> list[CallOut]:
    """All calls, newest first, with whether each is open now."""
    with runtime.reading() as session:
        return [_call(c, runtime) for c in service.list_calls(session)]


@calls.get("/{call}", response_model=CallOut)
def get_call(call: CallName, actor: ActorDep, runtime: RuntimeDep) -> CallOut:
    with runtime.reading() as session:
        return _call(service.get_call(session, name=call), runtime)


@applications.post("", response_model=ApplicationOut, status_code=201)
def apply(body: ApplicationCreate, actor: ActorDep, runtime: RuntimeDep) -> ApplicationOut:
    """Apply for GPU-hours for one of your projects (its managers). Submitted at once unless
    `submit` is false; a playground call decides at once."""
    with runtime.transaction() as session:
        result = service.create_application(
            session,
            actor=actor,
            call=body.call,
            project=body.project,
            gpu_hours=body.gpu_hours,
            title=body.title,
            summary=body.summary,
            submit=body.submit,
            now=runtime.clock(),
        )
    return _application(result)


@applications.get("", response_model=list[ApplicationOut])
def list_applications(
    actor: ActorDep,
    runtime: RuntimeDep,
    call: Annotated[
        str | None, Query(min_length=1, max_length=128, json_schema_extra={"pattern": SLUG})
    ] = None,
) -> list[ApplicationOut]:
    """Your projects' applications; for reviewers also every submitted one."""
    with runtime.reading() as session:
        return [_application(a) for a in service.list_applications(session, actor=actor, call=call)]


@applications.get("/{application_id}", response_model=ApplicationOut)
def get_application(
    application_id: ApplicationId, actor: ActorDep, runtime: RuntimeDep
) -> ApplicationOut:
    with runtime.reading() as session:
        return _application(
            service.get_application(session, actor=actor, application_id=application_id)
        )


@applications.post("/{application_id}/submit", response_model=ApplicationOut)
def submit(application_id: ApplicationId, actor: ActorDep, runtime: RuntimeDep) -> ApplicationOut:
    with runtime.transaction() as session:
        result = service.submit_application(
            session, actor=actor, application_id=application_id, now=runtime.clock()
        )
    return _application(result)


@applications.post("/{application_id}/withdraw", response_model=ApplicationOut)
def withdraw(application_id: ApplicationId, actor: ActorDep, runtime: RuntimeDep) -> ApplicationOut:
    with runtime.transaction() as session:
        result = service.withdraw_application(
            session, actor=actor, application_id=application_id, now=runtime.clock()
        )
    return _application(result)


@applications.post("/{application_id}/reviews", response_model=ApplicationOut, status_code=201)
def add_review(
    application_id: ApplicationId, body: ReviewCreate, actor: ActorDep, runtime: RuntimeDep
) -> ApplicationOut:
    """Reviewers: score an application 1-5 with a comment. Enough reviews decide it."""
    with runtime.transaction() as session:
        result = service.review(
            session,
            actor=actor,
            application_id=application_id,
            score=body.score,
            comment=body.comment,
            now=runtime.clock(),
        )
    return _application(result)
