"""Access calls, applications and reviews through the services, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.calls import ApplicationState, CallMode
from fabriek.core.errors import Conflict, Forbidden, IllegalTransition, InvalidRequest, NotFound
from fabriek.core.tenancy import OrgKind
from fabriek.server.db.models import ApplicationEventRow, ApplicationRow
from fabriek.server.services import allocations, calls, tenancy
from fabriek.server.services.actors import Actor
from tests.conftest import FrozenClock
from tests.server.factories import make_admin, make_user


@pytest.fixture
def world(sessions: sessionmaker[Session], clock: FrozenClock) -> dict[str, Actor]:
    """An operator; alice manages project vision of the verified Groningen university rug; carol
    is a plain member of rug and of vision; four reviewers, one of whom (rita) also belongs to rug;
    bob is of another organisation."""
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    carol = make_user(sessions, "carol", clock())
    bob = make_user(sessions, "bob", clock())
    reviewers = {
        name: make_user(sessions, name, clock(), reviewer=True)
        for name in ("rev", "rev2", "rev3", "rita")
    }
    with sessions() as session, session.begin():
        tenancy.create_organisation(
            session,
            actor=alice,
            name="rug",
            display_name="University of Groningen",
            kind=OrgKind.UNIVERSITY,
            country="NL",
            region="NL11",
            now=clock(),
        )
        tenancy.verify_organisation(session, actor=admin, name="rug", verified=True, now=clock())
        for name in ("carol", "rita"):
            tenancy.set_org_member(
                session,
                actor=alice,
                name="rug",
                user=name,
                role=tenancy.OrgRole.MEMBER,
                now=clock(),
            )
        tenancy.create_project(session, actor=alice, name="vision", organisation="rug", now=clock())
        tenancy.set_project_member(
            session,
            actor=alice,
            name="vision",
            user="carol",
            role=tenancy.ProjectRole.MEMBER,
            now=clock(),
        )
    return {"admin": admin, "alice": alice, "carol": carol, "bob": bob, **reviewers}


def _call(
    sessions: sessionmaker[Session],
    world: dict[str, Actor],
    clock: FrozenClock,
    mode: CallMode,
    **kw: object,
) -> calls.Call:
    with sessions() as session, session.begin():
        return calls.create_call(
            session,
            actor=world["admin"],
            name=str(kw.pop("name", mode.value.replace("_", "-"))),
            title=f"{mode.value} call",
            pool=str(kw.pop("pool", "regional")),
            mode=mode,
            opens_at=clock() - timedelta(days=1),
            closes_at=clock() + timedelta(days=30),
            total_gpu_hours=float(kw.pop("total", 100.0)),  # type: ignore[arg-type]
            max_gpu_hours=float(kw.pop("most", 50.0)),  # type: ignore[arg-type]
            now=clock(),
            **kw,  # type: ignore[arg-type]
        )


def _apply(
    sessions: sessionmaker[Session],
    actor: Actor,
    clock: FrozenClock,
    call: str,
    gpu_hours: float,
    *,
    submit: bool = True,
) -> calls.Application:
    with sessions() as session, session.begin():
        return calls.create_application(
            session,
            actor=actor,
            call=call,
            project="vision",
            gpu_hours=gpu_hours,
            title="Segmenting MRI scans",
            summary="nnU-Net on 3,000 scans",
            submit=submit,
            now=clock(),
        )


def _review(
    sessions: sessionmaker[Session], actor: Actor, clock: FrozenClock, app: int, score: int
) -> calls.Application:
    with sessions() as session, session.begin():
        return calls.review(
            session, actor=actor, application_id=app, score=score, comment="sound plan", now=clock()
        )


def test_playground_approves_at_once_first_come_first_served(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    _call(sessions, world, clock, CallMode.PLAYGROUND, total=60, most=40)
    first = _apply(sessions, world["alice"], clock, "playground", 40)
    assert first.state == ApplicationState.APPROVED and first.allocation_id is not None
    with sessions() as session:
        grant = allocations.get_allocation(
            session, actor=world["alice"], allocation_id=first.allocation_id
        )
        assert (grant.pool, grant.gpu_hours, grant.project) == ("regional", 40, "vision")
        assert calls.get_call(session, name="playground").granted_gpu_hours == 40
    second = _apply(sessions, world["alice"], clock, "playground", 30)
    assert second.state == ApplicationState.REJECTED
    assert second.decision == "call playground has 20 GPU-hours left to grant, 30 were asked"
    with sessions() as session:
        moves = session.scalars(
            select(ApplicationEventRow.to_state)
            .where(ApplicationEventRow.application_id == first.id)
            .order_by(ApplicationEventRow.id)
        ).all()
    assert moves == ["draft", "submitted", "approved"]


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        ("closed", Conflict, "call fast-lane is not open"),
        (
            "unverified",
            Conflict,
            "not eligible for call fast-lane: organisation rug is not verified",
        ),
        ("too-much", InvalidRequest, "grants at most 50 per application"),
        ("member", Forbidden, "only managers of project 'vision' apply"),
        ("foreign", NotFound, "no project named 'vision'"),
    ],
)
def test_bad_applications_are_refused_and_nothing_is_written(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    world: dict[str, Actor],
    setup: str,
    error: type[Exception],
    message: str,
) -> None:
    _call(sessions, world, clock, CallMode.FAST_LANE)
    actor, gpu_hours = world["alice"], 10.0
    if setup == "closed":
        clock.advance(31 * 86400)
    elif setup == "unverified":
        with sessions() as session, session.begin():
            tenancy.verify_organisation(
                session, actor=world["admin"], name="rug", verified=False, now=clock()
            )
    elif setup == "too-much":
        gpu_hours = 60
    elif setup == "member":
        actor = world["carol"]
    elif setup == "foreign":
        actor = world["bob"]
    with pytest.raises(error, match=message):
        _apply(sessions, actor, clock, "fast-lane", gpu_hours)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ApplicationRow)) == 0


def test_fast_lane_one_reviewer_decides(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    _call(sessions, world, clock, CallMode.FAST_LANE)
    app = _apply(sessions, world["alice"], clock, "fast-lane", 20)
    assert app.state == ApplicationState.SUBMITTED
    with pytest.raises(Forbidden, match="only reviewers"):
        _review(sessions, world["admin"], clock, app.id, 5)
    with pytest.raises(Conflict, match="you belong to the applying organisation"):
        _review(sessions, world["rita"], clock, app.id, 5)
    with pytest.raises(InvalidRequest, match="from 1 to 5"):
        _review(sessions, world["rev"], clock, app.id, 6)
    decided = _review(sessions, world["rev"], clock, app.id, 4)
    assert decided.state == ApplicationState.APPROVED and decided.allocation_id is not None
    with pytest.raises(Conflict, match="is approved; it takes no reviews"):
        _review(sessions, world["rev2"], clock, app.id, 1)
    # The applicant sees the score and comment, not who wrote them; an operator sees all.
    with sessions() as session:
        mine = calls.get_application(session, actor=world["alice"], application_id=app.id)
        theirs = calls.get_application(session, actor=world["admin"], application_id=app.id)
        with pytest.raises(NotFound):
            calls.get_application(session, actor=world["bob"], application_id=app.id)
    assert [(r.reviewer, r.score) for r in mine.reviews] == [(None, 4)]
    assert [(r.reviewer, r.score) for r in theirs.reviews] == [("rev", 4)]


def test_large_scale_panel_needs_the_threshold(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    _call(sessions, world, clock, CallMode.LARGE_SCALE, threshold=3.5, reviewers=3)
    app = _apply(sessions, world["alice"], clock, "large-scale", 50)
    assert _review(sessions, world["rev"], clock, app.id, 4).state == ApplicationState.UNDER_REVIEW
    with pytest.raises(Conflict, match=r"reviewed application \d+ already"):
        _review(sessions, world["rev"], clock, app.id, 5)
    assert _review(sessions, world["rev2"], clock, app.id, 3).state == ApplicationState.UNDER_REVIEW
    done = _review(sessions, world["rev3"], clock, app.id, 2)
    assert done.state == ApplicationState.REJECTED and done.allocation_id is None
    assert done.decision == "mean score 3.00 of 3 review(s) is below the threshold 3.5"


def test_drafts_are_private_and_withdrawing_ends_an_application(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    _call(sessions, world, clock, CallMode.FAST_LANE)
    draft = _apply(sessions, world["alice"], clock, "fast-lane", 10, submit=False)
    assert draft.state == ApplicationState.DRAFT
    with sessions() as session:
        assert calls.list_applications(session, actor=world["rev"]) == []  # not yet submitted
        assert calls.list_applications(session, actor=world["bob"]) == []
        assert [a.id for a in calls.list_applications(session, actor=world["carol"])] == [draft.id]
    with pytest.raises(NotFound), sessions() as session, session.begin():
        calls.review(
            session, actor=world["rev"], application_id=draft.id, score=3, comment="x", now=clock()
        )
    with sessions() as session, session.begin():
        submitted = calls.submit_application(
            session, actor=world["alice"], application_id=draft.id, now=clock()
        )
    assert submitted.state == ApplicationState.SUBMITTED
    with sessions() as session:
        assert [a.id for a in calls.list_applications(session, actor=world["rev"])] == [draft.id]
    with sessions() as session, session.begin():
        gone = calls.withdraw_application(
            session, actor=world["alice"], application_id=draft.id, now=clock()
        )
    assert gone.state == ApplicationState.WITHDRAWN
    with pytest.raises(IllegalTransition), sessions() as session, session.begin():
        calls.withdraw_application(
            session, actor=world["alice"], application_id=draft.id, now=clock()
        )


def test_calls_are_opened_by_operators_with_sane_numbers(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    with sessions() as session, session.begin(), pytest.raises(Forbidden, match="only operators"):
        calls.create_call(
            session,
            actor=world["alice"],
            name="mine",
            title="Mine",
            pool="regional",
            mode=CallMode.PLAYGROUND,
            opens_at=clock(),
            closes_at=clock() + timedelta(days=1),
            total_gpu_hours=10,
            max_gpu_hours=1,
            now=clock(),
        )
    for kw, message in (
        ({"total": 10, "most": 20}, "at most the total"),
        ({"pool": "nowhere"}, "no pool named 'nowhere'"),
        ({"reviewers": 1}, "needs 2 to 20 reviews"),
    ):
        with pytest.raises((InvalidRequest, NotFound), match=message):
            _call(sessions, world, clock, CallMode.LARGE_SCALE, **kw)


def test_concurrent_playground_approvals_never_overdraw_the_call(
    sessions: sessionmaker[Session], clock: FrozenClock, world: dict[str, Actor]
) -> None:
    import threading

    _call(sessions, world, clock, CallMode.PLAYGROUND, total=10, most=8)
    outcomes: list[ApplicationState] = []
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        try:
            outcomes.append(_apply(sessions, world["alice"], clock, "playground", 8).state)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert outcomes.count(ApplicationState.APPROVED) == 1
    assert outcomes.count(ApplicationState.REJECTED) == 7
    with sessions() as session:
        assert calls.get_call(session, name="playground").granted_gpu_hours == 8
        assert len(allocations.list_allocations(session, actor=world["admin"])) == 1
