"""Access calls, applications to them, reviews, and the allocations that approval creates.

Who may do what:
- operators open calls (into a pool, with a mode, dates, a budget and a maximum per application);
  everyone signed in sees the calls;
- a project's managers (and its organisation's owners and managers) apply for the project, submit
  and withdraw; they see their applications with the scores and comments of the reviews, not who
  wrote them;
- reviewers (the platform role) see submitted applications and score them from 1 to 5, never one
  of an organisation they belong to;
- the call's mode decides: playground at once while GPU-hours are left, fast_lane on one review,
  large_scale on a panel whose mean score must reach the threshold. Approval creates the
  allocation, for the call's allocation period, and counts against the call's total.

Every state change of an application goes through `transition_application`, which checks the
move and writes an application event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fabriek.core.calls import (
    DEFAULT_REVIEWERS,
    DEFAULT_THRESHOLD,
    MAX_SCORE,
    MIN_SCORE,
    ApplicationState,
    CallMode,
    check_application_move,
    check_score,
    decide,
)
from fabriek.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from fabriek.core.tenancy import (
    Eligibility,
    check_display_name,
    check_pool_name,
)
from fabriek.server.db.models import (
    ApplicationEventRow,
    ApplicationRow,
    CallRow,
    OrganisationMemberRow,
    OrganisationRow,
    PoolRow,
    ProjectRow,
    ReviewRow,
    UserRow,
)
from fabriek.server.services import allocations, audit
from fabriek.server.services.actors import Actor
from fabriek.server.services.tenancy import (
    get_organisation,
    may_manage_project,
    project_access,
    visible_project_ids,
)

MAX_SUMMARY = 20_000
# Who decides by the call's rules, in events and audit records; also reads any organisation.
SYSTEM = Actor(user_id=None, name="fabriek", is_operator=True)


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    title: str
    pool: str
    mode: CallMode
    opens_at: datetime
    closes_at: datetime
    total_gpu_hours: float
    granted_gpu_hours: float
    max_gpu_hours: float
    allocation_days: int
    reviewers: int
    threshold: float
    eligibility: Eligibility
    created_by: str

    def is_open(self, now: datetime) -> bool:
        return self.opens_at <= now < self.closes_at


@dataclass(frozen=True, slots=True)
class Review:
    reviewer: str | None  # shown to operators only
    score: int
    comment: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Application:
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
    allocation_id: int | None
    reviews: tuple[Review, ...] = ()


def _to_call(row: CallRow, pool: str) -> Call:
    return Call(
        row.name,
        row.title,
        pool,
        CallMode(row.mode),
        row.opens_at,
        row.closes_at,
        row.total_gpu_hours,
        row.granted_gpu_hours,
        row.max_gpu_hours,
        row.allocation_days,
        row.reviewers,
        row.threshold,
        Eligibility.from_json(row.eligibility),
        row.created_by,
    )


# --- calls --------------------------------------------------------------------------------------
def create_call(
    session: Session,
    *,
    actor: Actor,
    name: str,
    title: str,
    pool: str,
    mode: CallMode,
    opens_at: datetime,
    closes_at: datetime,
    total_gpu_hours: float,
    max_gpu_hours: float,
    allocation_days: int = 365,
    reviewers: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    eligibility: Eligibility = Eligibility(),
    now: datetime,
) -> Call:
    if not actor.is_operator:
        raise Forbidden("only operators open access calls")
    check_pool_name(name)
    title = check_display_name(title)
    if closes_at <= opens_at:
        raise InvalidRequest("a call closes after it opens")
    if not total_gpu_hours > 0 or not 0 < max_gpu_hours <= total_gpu_hours:
        raise InvalidRequest(
            "a call has a total above 0 GPU-hours, and a maximum per application above 0 and "
            "at most the total"
        )
    if not 1 <= allocation_days <= allocations.MAX_DAYS:
        raise InvalidRequest(f"allocations last 1 to {allocations.MAX_DAYS} days")
    needed = DEFAULT_REVIEWERS[mode] if reviewers is None else reviewers
    least = {CallMode.PLAYGROUND: 0, CallMode.FAST_LANE: 1, CallMode.LARGE_SCALE: 2}[mode]
    if not least <= needed <= 20:
        raise InvalidRequest(f"a {mode.value} call needs {least} to 20 reviews, not {needed}")
    if not MIN_SCORE <= threshold <= MAX_SCORE:
        raise InvalidRequest(f"the threshold is a mean score from {MIN_SCORE} to {MAX_SCORE}")
    pool_id = session.scalar(select(PoolRow.id).where(PoolRow.name == pool))
    if pool_id is None:
        raise NotFound(f"no pool named {pool!r}")
    if session.scalar(select(CallRow.id).where(CallRow.name == name)):
        raise Conflict(f"a call named {name!r} exists already")
    row = CallRow(
        name=name,
        title=title,
        pool_id=pool_id,
        mode=mode.value,
        opens_at=opens_at,
        closes_at=closes_at,
        total_gpu_hours=float(total_gpu_hours),
        granted_gpu_hours=0.0,
        max_gpu_hours=float(max_gpu_hours),
        allocation_days=allocation_days,
        reviewers=needed,
        threshold=float(threshold),
        eligibility=eligibility.to_json(),
        created_by=actor.name,
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="call.create",
        target_type="call",
        target_id=row.id,
        at=now,
        name=name,
        pool=pool,
        mode=mode.value,
        total_gpu_hours=row.total_gpu_hours,
        opens_at=opens_at.isoformat(),
        closes_at=closes_at.isoformat(),
    )
    return _to_call(row, pool)


def list_calls(session: Session) -> list[Call]:
    rows = session.execute(
        select(CallRow, PoolRow.name)
        .join(PoolRow, PoolRow.id == CallRow.pool_id)
        .order_by(CallRow.opens_at.desc(), CallRow.id.desc())
    )
    return [_to_call(row, pool) for row, pool in rows]


def get_call(session: Session, *, name: str) -> Call:
    found = session.execute(
        select(CallRow, PoolRow.name)
        .join(PoolRow, PoolRow.id == CallRow.pool_id)
        .where(CallRow.name == name)
    ).first()
    if found is None:
        raise NotFound(f"no call named {name!r}")
    return _to_call(*found)


# --- applications -------------------------------------------------------------------------------
def transition_application(
    session: Session,
    row: ApplicationRow,
    to: ApplicationState,
    *,
    at: datetime,
    actor: str,
    reason: str | None = None,
) -> None:
    """The one place where an application's state changes."""
    current = ApplicationState(row.state)
    check_application_move(row.id, current, to)
    row.state = to.value
    if to == ApplicationState.SUBMITTED:
        row.submitted_at = at
    if to.is_final:
        row.decided_at = at
        row.decision = reason
    session.add(
        ApplicationEventRow(
            application_id=row.id,
            at=at,
            from_state=current.value,
            to_state=to.value,
            actor=actor,
            reason=reason,
        )
    )


def _access(session: Session, actor: Actor, project: str) -> tuple[bool, bool]:
    """Whether the actor sees the project, and whether they manage it (tenancy's rules)."""
    try:
        _, _, org_role, role = project_access(session, actor, project)
    except NotFound:
        return False, False
    return True, may_manage_project(actor, org_role, role)


def create_application(
    session: Session,
    *,
    actor: Actor,
    call: str,
    project: str,
    gpu_hours: float,
    title: str,
    summary: str = "",
    submit: bool = True,
    now: datetime,
) -> Application:
    """A project's application to a call, as a draft or (`submit`) submitted at once."""
    sees, manages = _access(session, actor, project)
    if not sees:
        raise NotFound(f"no project named {project!r}")
    if not manages:
        raise Forbidden(f"only managers of project {project!r} apply for it")
    project_id = session.scalar(select(ProjectRow.id).where(ProjectRow.name == project))
    call_info = get_call(session, name=call)
    title = check_display_name(title)
    if len(summary) > MAX_SUMMARY:
        raise InvalidRequest(f"the summary is at most {MAX_SUMMARY} characters")
    if not gpu_hours > 0:
        raise InvalidRequest("an application asks for more than 0 GPU-hours")
    # The call's row is locked first, by every path that may decide an application: the FK
    # check of the insert below would otherwise take a share lock that deadlocks with it.
    call_id = session.scalar(select(CallRow.id).where(CallRow.name == call).with_for_update())
    row = ApplicationRow(
        call_id=call_id,
        project_id=project_id,
        title=title,
        summary=summary,
        gpu_hours=float(gpu_hours),
        state=ApplicationState.DRAFT.value,
        applicant=actor.name,
        created_at=now,
    )
    session.add(row)
    session.flush()
    session.add(
        ApplicationEventRow(
            application_id=row.id,
            at=now,
            from_state=None,
            to_state=ApplicationState.DRAFT.value,
            actor=actor.label,
            reason=None,
        )
    )
    audit.record(
        session,
        actor=actor,
        action="application.create",
        target_type="application",
        target_id=row.id,
        at=now,
        call=call_info.name,
        project=project,
        gpu_hours=row.gpu_hours,
    )
    if submit:
        return submit_application(session, actor=actor, application_id=row.id, now=now)
    return _load(session, actor=actor, application_id=row.id)


def _row(session: Session, application_id: int) -> tuple[ApplicationRow, CallRow, ProjectRow]:
    found = session.execute(
        select(ApplicationRow, CallRow, ProjectRow)
        .join(CallRow, CallRow.id == ApplicationRow.call_id)
        .join(ProjectRow, ProjectRow.id == ApplicationRow.project_id)
        .where(ApplicationRow.id == application_id)
        .with_for_update(of=(ApplicationRow, CallRow))  # the call too: see create_application
        .execution_options(populate_existing=True)
    ).first()
    if found is None:
        raise NotFound(f"no application {application_id}")
    return found[0], found[1], found[2]


def _check_manager(
    session: Session, actor: Actor, application_id: int
) -> tuple[ApplicationRow, CallRow, ProjectRow]:
    app, call, project = _row(session, application_id)
    sees, manages = _access(session, actor, project.name)
    if not sees:
        raise NotFound(f"no application {application_id}")
    if not manages:
        raise Forbidden(f"only managers of project {project.name!r} submit or withdraw it")
    return app, call, project


def submit_application(
    session: Session, *, actor: Actor, application_id: int, now: datetime
) -> Application:
    app, call, project = _check_manager(session, actor, application_id)
    if not call.opens_at <= now < call.closes_at:
        raise Conflict(
            f"call {call.name} is not open (open {call.opens_at:%Y-%m-%d %H:%M} to "
            f"{call.closes_at:%Y-%m-%d %H:%M} UTC)"
        )
    if app.gpu_hours > call.max_gpu_hours:
        raise InvalidRequest(
            f"the application asks for {app.gpu_hours:g} GPU-hours; call {call.name} grants at "
            f"most {call.max_gpu_hours:g} per application"
        )
    _check_eligible(session, actor, call, project)
    transition_application(session, app, ApplicationState.SUBMITTED, at=now, actor=actor.label)
    audit.record(
        session,
        actor=actor,
        action="application.submit",
        target_type="application",
        target_id=app.id,
        at=now,
        call=call.name,
    )
    if CallMode(call.mode) == CallMode.PLAYGROUND:
        _settle(session, app, call, approve=True, now=now)
    return _load(session, actor=actor, application_id=app.id)


def _check_eligible(session: Session, actor: Actor, call: CallRow, project: ProjectRow) -> None:
    org_name = session.scalar(
        select(OrganisationRow.name).where(OrganisationRow.id == project.organisation_id)
    )
    assert org_name is not None
    org = get_organisation(session, actor=SYSTEM, name=org_name)
    pool = session.get(PoolRow, call.pool_id)
    assert pool is not None
    for rules in (Eligibility.from_json(pool.eligibility), Eligibility.from_json(call.eligibility)):
        why_not = rules.check(org)
        if why_not:
            raise Conflict(f"not eligible for call {call.name}: {why_not}")


def _settle(
    session: Session,
    app: ApplicationRow,
    call: CallRow,
    *,
    approve: bool,
    now: datetime,
    reason: str | None = None,
) -> None:
    """Decide: approval creates the allocation if the call still has the GPU-hours."""
    if approve:
        # populate_existing: the call was read before the lock; take its committed numbers.
        locked = session.scalar(
            select(CallRow)
            .where(CallRow.id == call.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        assert locked is not None
        left = locked.total_gpu_hours - locked.granted_gpu_hours
        if app.gpu_hours > left + 1e-9:
            approve, reason = (
                False,
                (
                    f"call {locked.name} has {max(left, 0):g} GPU-hours left to grant, "
                    f"{app.gpu_hours:g} were asked"
                ),
            )
        else:
            locked.granted_gpu_hours += app.gpu_hours
            allocation = allocations.create(
                session,
                project_id=app.project_id,
                pool_id=locked.pool_id,
                gpu_hours=app.gpu_hours,
                starts_at=now,
                days=locked.allocation_days,
                granted_by=f"call:{locked.name}",
                note=f"application {app.id}: {app.title}",
                now=now,
            )
            app.allocation_id = allocation.id
            reason = (
                reason or f"approved; allocation {allocation.id} of {app.gpu_hours:g} GPU-hours"
            )
    to = ApplicationState.APPROVED if approve else ApplicationState.REJECTED
    transition_application(session, app, to, at=now, actor=SYSTEM.label, reason=reason)
    audit.record(
        session,
        actor=SYSTEM,
        action=f"application.{to.value}",
        target_type="application",
        target_id=app.id,
        at=now,
        reason=reason,
        allocation=app.allocation_id,
    )


def withdraw_application(
    session: Session, *, actor: Actor, application_id: int, now: datetime
) -> Application:
    app, _, _ = _check_manager(session, actor, application_id)
    transition_application(
        session, app, ApplicationState.WITHDRAWN, at=now, actor=actor.label, reason="withdrawn"
    )
    audit.record(
        session,
        actor=actor,
        action="application.withdraw",
        target_type="application",
        target_id=app.id,
        at=now,
    )
    return _load(session, actor=actor, application_id=app.id)


def review(
    session: Session,
    *,
    actor: Actor,
    application_id: int,
    score: int,
    comment: str,
    now: datetime,
) -> Application:
    """A reviewer's score (1-5). When the call's mode has enough reviews, the application is
    decided."""
    if not actor.is_reviewer:
        raise Forbidden("only reviewers review applications")
    check_score(score)
    if not comment.strip() or len(comment) > MAX_SUMMARY:
        raise InvalidRequest("a review needs a comment (at most 20,000 characters)")
    app, call, project = _row(session, application_id)
    state = ApplicationState(app.state)
    if state == ApplicationState.DRAFT:
        raise NotFound(f"no application {application_id}")  # drafts are the applicant's own
    if state not in (ApplicationState.SUBMITTED, ApplicationState.UNDER_REVIEW):
        raise Conflict(f"application {application_id} is {state.value}; it takes no reviews")
    if CallMode(call.mode) == CallMode.PLAYGROUND:
        raise Conflict("playground applications are not reviewed")
    in_org = session.scalar(
        select(OrganisationMemberRow.role).where(
            OrganisationMemberRow.organisation_id == project.organisation_id,
            OrganisationMemberRow.user_id == actor.user_id,
        )
    )
    if in_org is not None:
        raise Conflict("you belong to the applying organisation; someone else must review this")
    if session.scalar(
        select(ReviewRow.id).where(
            ReviewRow.application_id == app.id, ReviewRow.reviewer_id == actor.user_id
        )
    ):
        raise Conflict(f"you reviewed application {application_id} already")
    session.add(
        ReviewRow(
            application_id=app.id,
            reviewer_id=actor.user_id,
            score=score,
            comment=comment.strip(),
            created_at=now,
        )
    )
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="application.review",
        target_type="application",
        target_id=app.id,
        at=now,
        score=score,
    )
    if state == ApplicationState.SUBMITTED:
        transition_application(
            session, app, ApplicationState.UNDER_REVIEW, at=now, actor=actor.label
        )
    scores = list(
        session.scalars(select(ReviewRow.score).where(ReviewRow.application_id == app.id))
    )
    outcome = decide(
        CallMode(call.mode), scores, reviewers=call.reviewers, threshold=call.threshold
    )
    if outcome is not None:
        mean = sum(scores) / len(scores)
        reason = (
            None
            if outcome
            else (
                f"mean score {mean:.2f} of {len(scores)} review(s) is below the threshold "
                f"{call.threshold:g}"
            )
        )
        if outcome:
            try:
                _check_eligible(session, actor, call, project)
            except Conflict as exc:  # e.g. no longer verified since it applied
                outcome, reason = False, exc.message
        _settle(session, app, call, approve=outcome, now=now, reason=reason)
    return _load(session, actor=actor, application_id=app.id)


# --- reading ------------------------------------------------------------------------------------
def _applications(
    session: Session, actor: Actor, *, application_id: int | None = None, call: str | None = None
) -> list[Application]:
    """The applications the actor may see (one query, and one for all their reviews)."""
    query = (
        select(ApplicationRow, CallRow.name, ProjectRow.name)
        .join(CallRow, CallRow.id == ApplicationRow.call_id)
        .join(ProjectRow, ProjectRow.id == ApplicationRow.project_id)
        .order_by(ApplicationRow.id)
    )
    if application_id is not None:
        query = query.where(ApplicationRow.id == application_id)
    if call is not None:
        query = query.where(CallRow.name == call)
    if not actor.is_operator:
        theirs = ApplicationRow.project_id.in_(visible_project_ids(actor))
        if actor.is_reviewer:  # reviewers see every application once it is submitted
            theirs = theirs | (ApplicationRow.state != ApplicationState.DRAFT.value)
        query = query.where(theirs)
    rows = session.execute(query).all()
    reviews: dict[int, list[Review]] = {app.id: [] for app, _, _ in rows}
    for app_id, score, comment, at, name in session.execute(
        select(
            ReviewRow.application_id,
            ReviewRow.score,
            ReviewRow.comment,
            ReviewRow.created_at,
            UserRow.name,
        )
        .join(UserRow, UserRow.id == ReviewRow.reviewer_id)
        .where(ReviewRow.application_id.in_(list(reviews)))
        .order_by(ReviewRow.id)
    ):
        reviews[app_id].append(Review(name if actor.is_operator else None, score, comment, at))
    return [
        Application(
            app.id,
            call_name,
            project,
            app.title,
            app.summary,
            app.gpu_hours,
            ApplicationState(app.state),
            app.applicant,
            app.created_at,
            app.submitted_at,
            app.decided_at,
            app.decision,
            app.allocation_id,
            tuple(reviews[app.id]),
        )
        for app, call_name, project in rows
    ]


def _load(session: Session, *, actor: Actor, application_id: int) -> Application:
    found = _applications(session, actor, application_id=application_id)
    if not found:
        raise NotFound(f"no application {application_id}")
    return found[0]


def get_application(session: Session, *, actor: Actor, application_id: int) -> Application:
    return _load(session, actor=actor, application_id=application_id)


def list_applications(
    session: Session, *, actor: Actor, call: str | None = None
) -> list[Application]:
    """The applications the actor may see: their projects', and (reviewers) all submitted ones."""
    return _applications(session, actor, call=call)
