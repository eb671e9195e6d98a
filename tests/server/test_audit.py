"""The audit trail, through the services, on both databases (issue 21, item 11): a state change
is recorded once, refused attempts are recorded rate-limited and bounded, operators read it with
filters a page at a time."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.audit import FORBIDDEN, NOT_FOUND, TOKEN_REFUSED, canonical_details
from fabriek.core.errors import (
    Conflict,
    FabriekError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from fabriek.core.jobs import JobState
from fabriek.server.db.models import AuditEventRow, JobRow
from fabriek.server.services import audit, facility, refusals
from fabriek.server.services.actors import Actor
from fabriek.server.services.audit import AuditFilters, list_events
from fabriek.server.services.jobs import cancel_job
from fabriek.server.services.refusals import RefusalLog, access_refused, clean, token_refused
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.server.factories import make_admin, make_job, make_user

OURS = "fbk_" + "A1b2" + "x" * 39  # the shape of a token of ours (not a real one)


def _events(sessions: sessionmaker[Session], action: str | None = None) -> list[AuditEventRow]:
    with sessions() as session:
        query = select(AuditEventRow).order_by(AuditEventRow.id)
        if action is not None:
            query = query.where(AuditEventRow.action == action)
        return list(session.scalars(query))


# --- a state change, once -----------------------------------------------------------------------
def _running_job(sessions: sessionmaker[Session], clock: FrozenClock) -> tuple[Actor, int]:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision",))
    job = make_job(sessions, alice, clock(), project="vision")
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.ADMITTED, at=clock(), actor="t")
        transition_job(session, row, JobState.RUNNING, at=clock(), actor="t")
    return alice, job.id


def test_a_storm_of_cancels_of_a_stopping_job_is_audited_once(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    alice, job_id = _running_job(sessions, clock)
    errors: list[BaseException] = []

    def cancel() -> None:
        try:
            for _ in range(10):
                with sessions() as session, session.begin():
                    cancel_job(session, actor=alice, job_id=job_id, now=clock())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=cancel) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert [e.target_id for e in _events(sessions, "job.cancel")] == [str(job_id)]
    # Once it has ended, a cancel is refused (and writes nothing either).
    with sessions() as session, session.begin():
        row = session.get(JobRow, job_id)
        assert row is not None
        transition_job(session, row, JobState.CANCELLED, at=clock(), actor="t")
    with pytest.raises(Conflict), sessions() as session, session.begin():
        cancel_job(session, actor=alice, job_id=job_id, now=clock())
    assert len(_events(sessions, "job.cancel")) == 1


def test_setting_the_facility_as_it_is_changes_and_audits_nothing(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    for _ in range(3):
        with sessions() as session, session.begin():
            facility.set_facility(session, actor=admin, now=clock(), pue=1.3)
    with sessions() as session, session.begin():
        facility.set_facility(session, actor=admin, now=clock())  # nothing given
    assert [e.details["pue"] for e in _events(sessions, "facility.update")] == [1.3]


# --- reading it ---------------------------------------------------------------------------------
def _trail(sessions: sessionmaker[Session], clock: FrozenClock) -> Actor:
    """Seven events an hour apart, ids 1-7 (after the operator's bootstrap events)."""
    admin, _ = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        session.execute(AuditEventRow.__table__.delete())  # the bootstrap's
    rows = [
        ("user:anna", "job.submit", "job", "1"),
        ("user:anna", "job.cancel", "job", "1"),
        ("user:bob", "job.submit", "job", "2"),
        ("user:bob", "jobs.other", "job", "2"),  # `job` must not match `jobs.*`
        ("controller", "job.preempt", "job", "2"),
        ("user:mallory", "access.not_found", "job", "1"),
        ("user:mallory", "access.not_found.repeated", "job", "1"),
    ]
    with sessions() as session, session.begin():
        for i, (who, action, target_type, target_id) in enumerate(rows):
            audit.append(
                session,
                actor=who,
                action=action,
                target_type=target_type,
                target_id=target_id,
                at=clock() + timedelta(hours=i),
                details={"n": i},
            )
    return admin


FILTERS: list[tuple[AuditFilters, list[int]]] = [
    (AuditFilters(), [6, 5, 4, 3, 2, 1, 0]),
    (AuditFilters(actor="user:anna"), [1, 0]),
    (AuditFilters(action="job"), [4, 2, 1, 0]),
    (AuditFilters(action="job."), [4, 2, 1, 0]),
    (AuditFilters(action="job.cancel"), [1]),
    (AuditFilters(action="jo"), []),  # a dotted prefix, not a string prefix
    (AuditFilters(action="job_"), []),  # `_` is no wildcard
    (AuditFilters(action="access"), [6, 5]),
    (AuditFilters(action="access.not_found"), [6, 5]),
    (AuditFilters(target_type="job", target_id="2"), [4, 3, 2]),
    (AuditFilters(actor="user:mallory", target_type="job", target_id="1"), [6, 5]),
]


@pytest.mark.parametrize(("filters", "expected"), FILTERS)
def test_operators_filter_the_trail(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    filters: AuditFilters,
    expected: list[int],
) -> None:
    admin = _trail(sessions, clock)
    with sessions() as session:
        events, next_before = list_events(session, actor=admin, filters=filters, limit=100)
    assert [e.details["n"] for e in events] == expected
    assert next_before is None


def test_the_trail_pages_by_id_and_filters_by_time(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin = _trail(sessions, clock)
    seen: list[int] = []
    before = None
    with sessions() as session:
        while True:
            page, before = list_events(
                session, actor=admin, filters=AuditFilters(before=before), limit=3
            )
            seen += [e.details["n"] for e in page]
            if before is None:
                break
        assert seen == [6, 5, 4, 3, 2, 1, 0]
        since, until = clock() + timedelta(hours=2), clock() + timedelta(hours=4)
        page, _ = list_events(session, actor=admin, filters=AuditFilters(since=since, until=until))
        assert [e.details["n"] for e in page] == [3, 2]


@pytest.mark.parametrize(
    ("filters", "limit", "error", "words"),
    [
        (AuditFilters(), 0, InvalidRequest, "limit is 1 to 1000"),
        (AuditFilters(), 1001, InvalidRequest, "limit is 1 to 1000"),
        (AuditFilters(target_id="1"), 10, InvalidRequest, "needs its target type"),
    ],
)
def test_bad_filters_are_refused(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    filters: AuditFilters,
    limit: int,
    error: type[Exception],
    words: str,
) -> None:
    admin = _trail(sessions, clock)
    with sessions() as session, pytest.raises(error, match=words):
        list_events(session, actor=admin, filters=filters, limit=limit)


def test_an_empty_time_range_is_refused(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin = _trail(sessions, clock)
    with sessions() as session, pytest.raises(InvalidRequest, match="time range is empty"):
        list_events(session, actor=admin, filters=AuditFilters(since=clock(), until=clock()))


def test_only_operators_read_the_trail(sessions: sessionmaker[Session], clock: FrozenClock) -> None:
    _trail(sessions, clock)
    anna = make_user(sessions, "anna", clock(), reviewer=True)
    with sessions() as session, pytest.raises(Forbidden, match="only operators"):
        list_events(session, actor=anna)


# --- refused attempts ---------------------------------------------------------------------------
class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log(
    sessions: sessionmaker[Session], clock: FrozenClock, **kw: Any
) -> tuple[RefusalLog, Ticks]:
    ticks = Ticks()
    return RefusalLog(sessions, clock=clock, window_s=60, monotonic=ticks, **kw), ticks


def _forbidden(who: str = "mallory", route: str = "/api/v1/users") -> refusals.Refusal:
    refusal = access_refused(
        Actor(9, who),
        Forbidden("only operators list all users"),
        client="192.0.2.7",
        route=route,
        method="GET",
        params={},
    )
    assert refusal is not None
    return refusal


def _note(log: RefusalLog, refusal: refusals.Refusal) -> None:
    if log.note(refusal):
        log.write(refusal)


def test_refusals_are_written_once_a_window_with_the_count_of_the_rest(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    log, ticks = _log(sessions, clock)
    for _ in range(36):
        _note(log, _forbidden())
        ticks.now += 1  # 36 s: all in one window
    _note(log, _forbidden("eve"))  # another actor: a window of its own
    assert [(e.actor, e.action) for e in _events(sessions)] == [
        ("user:mallory", FORBIDDEN),
        ("user:eve", FORBIDDEN),
    ]
    assert log.flush() == 0  # nothing has ended yet
    ticks.now += 60
    assert log.flush() == 1  # eve's window had no repeats: nothing more to say
    repeated = _events(sessions, f"{FORBIDDEN}.repeated")
    assert [(e.actor, e.target_type, e.target_id) for e in repeated] == [
        ("user:mallory", "route", "/api/v1/users")
    ]
    assert repeated[0].details["repeats"] == 35
    assert repeated[0].details["routes"] == ["/api/v1/users"]
    # A new window: written at once again.
    _note(log, _forbidden())
    assert len(_events(sessions, FORBIDDEN)) == 3


def test_close_writes_the_counts_of_windows_still_open(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    log, _ = _log(sessions, clock)
    for route in ("/api/v1/users", "/api/v1/pools", "/api/v1/users"):
        _note(log, _forbidden(route=route))
    log.close()
    repeated = _events(sessions, f"{FORBIDDEN}.repeated")
    assert [(e.target_type, e.target_id, e.details["repeats"]) for e in repeated] == [
        ("*", "*", 2)  # not all about one target
    ]
    assert repeated[0].details["routes"] == ["/api/v1/users", "/api/v1/pools"]


def test_a_flood_of_clients_is_counted_in_one_window_when_the_table_is_full(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    log, _ = _log(sessions, clock, max_keys=3)
    for i in range(10):
        refusal = token_refused(
            "nope", Unauthenticated("x", reason="unknown"), client=f"198.51.100.{i}",
            route="/api/v1/whoami", method="GET",
        )  # fmt: skip
        _note(log, refusal)
    log.close()
    assert len(_events(sessions, TOKEN_REFUSED)) == 4  # 3 addresses, then one for the rest
    repeated = _events(sessions, f"{TOKEN_REFUSED}.repeated")
    assert [(e.actor, e.details["repeats"]) for e in repeated] == [("*", 6)]


def test_windows_dropped_to_make_room_keep_their_counts(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    log, ticks = _log(sessions, clock, max_keys=2)
    for who in ("ann", "ann", "bob"):  # ann: one repeat
        _note(log, _forbidden(who))
    ticks.now += 61  # both windows end; a third actor needs room
    _note(log, _forbidden("cyd"))
    log.close()
    repeated = _events(sessions, f"{FORBIDDEN}.repeated")
    assert [(e.actor, e.details["repeats"]) for e in repeated] == [("user:ann", 1)]


def test_a_refused_token_is_kept_as_its_prefix_only_and_only_if_it_is_ours(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    log, _ = _log(sessions, clock)
    blob = "fbk_" + "\x1b]0;owned\x07" * 500  # not our shape: nothing of it is kept
    for client, token, error in (
        ("192.0.2.1", OURS, Unauthenticated("revoked", reason="revoked", user="alice")),
        ("192.0.2.2", blob, Unauthenticated("unknown", reason="unknown")),
    ):
        _note(log, token_refused(token, error, client=client, route="/api/v1/jobs", method="POST"))
    first, second = _events(sessions, TOKEN_REFUSED)
    assert (first.actor, first.target_type, first.target_id) == (
        "client:192.0.2.1",
        "token",
        OURS[:8],
    )
    assert first.details == {
        "reason": "revoked",
        "token": "fbk_A1b2",
        "user": "alice",
        "method": "POST",
        "route": "/api/v1/jobs",
        "client": "192.0.2.1",
    }
    assert (second.target_id, second.details["token"]) == ("-", "not a fabriek token")
    for event in (first, second):
        stored = canonical_details(event.details) + event.actor + event.target_id
        assert OURS not in stored and OURS[8:16] not in stored
        assert "owned" not in stored and "\x1b" not in stored


def test_a_not_found_says_whether_the_object_exists_and_keeps_path_values_bounded(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision",))
    job = make_job(sessions, alice, clock(), project="vision")
    log, _ = _log(sessions, clock)
    long_name = "\u202e" + "n" * 500
    for who, route, params in (
        ("mallory", "/api/v1/jobs/{job_id}", {"job_id": str(job.id)}),
        ("eve", "/api/v1/jobs/{job_id}/logs", {"job_id": "2147483647"}),
        ("oscar", "/api/v1/projects/{project}/members/{user}", {"project": long_name, "user": "x"}),
    ):
        refusal = access_refused(
            Actor(9, who), NotFound(f"no such thing {params}"), client="192.0.2.7",
            route=route, method="GET", params=params,
        )  # fmt: skip
        assert refusal is not None
        _note(log, refusal)
    mallory, eve, oscar = _events(sessions, NOT_FOUND)
    assert (mallory.target_type, mallory.target_id) == ("job", str(job.id))
    assert mallory.details["exists"] is True  # someone else's job: a probe
    assert mallory.details["route"] == "/api/v1/jobs/{job_id}"
    assert eve.details["exists"] is False
    assert oscar.target_type == "project" and oscar.details["exists"] is False
    assert oscar.target_id.startswith("\\u202e") and len(oscar.target_id) == 64
    assert len(oscar.details["message"]) <= refusals.MAX_MESSAGE
    assert "\u202e" not in canonical_details(oscar.details)


def test_other_errors_and_a_workdir_not_yet_uploaded_are_no_refusals() -> None:
    def refused(error: FabriekError, params: dict[str, str]) -> object:
        return access_refused(
            Actor(9, "m"), error, client="c", route="/r", method="GET", params=params
        )

    assert refused(Conflict("busy"), {}) is None
    # The SDK asks whether the server has a workdir before each upload: a 404 is its answer.
    assert refused(NotFound("no workdir"), {"digest": "ab" * 32}) is None
    assert refused(Forbidden("no"), {"digest": "ab" * 32}) is not None


@pytest.mark.parametrize(
    ("text", "limit", "kept"),
    [
        ("plain", 64, "plain"),
        ("a\x1b[31mb", 64, "a\\u001b[31mb"),
        ("\u200b\u202e\x7f", 64, "\\u200b\\u202e\\u007f"),
        ("x" * 100, 10, "x" * 9 + "…"),
        ("ümlaut", 64, "ümlaut"),
    ],
)
def test_kept_text_is_bounded_and_shows_hidden_characters(text: str, limit: int, kept: str) -> None:
    assert clean(text, limit) == kept
