"""Services on both databases: validation, tenancy, transitions, audit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import (
    Conflict,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    ResourcesUnavailable,
    Unauthenticated,
)
from fabriek.core.jobs import JobState
from fabriek.server.db.models import AuditEventRow, JobEventRow, JobRow, TokenRow
from fabriek.server.services.auth import authenticate, bootstrap, hash_token
from fabriek.server.services.jobs import cancel_job, get_job, list_jobs, submit_job
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.server.factories import PARTITIONS, make_admin, make_job, make_request, make_user


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_bootstrap_once_and_token_is_stored_hashed(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, token = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        assert bootstrap(session, admin_name="other", now=clock()) is None
    with sessions() as session:
        stored = session.scalars(select(TokenRow.token_hash)).all()
        assert stored == [hash_token(token)] and token not in stored
        assert authenticate(session, token=token, now=clock()).user_id == admin.user_id
        with pytest.raises(Unauthenticated, match="not valid"):
            authenticate(session, token=token + "x", now=clock())


def test_submit_writes_job_event_and_audit(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock(), argv=["python", "t.py"], cpus=2)
    assert job.state == JobState.PENDING and job.project == "default"
    with sessions() as session:
        detail = get_job(session, actor=admin, job_id=job.id)
        actions = session.scalars(select(AuditEventRow.action)).all()
    assert [e.to_state for e in detail.events] == [JobState.PENDING]
    assert "job.submit" in actions
    assert detail.queue_position == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cpus": 3}, ResourcesUnavailable),
        ({"gpus": 3}, ResourcesUnavailable),
        ({"mem": 5 * 2**30}, ResourcesUnavailable),
        ({"cpus": 0}, InvalidRequest),
        ({"time_limit_s": 0}, InvalidRequest),
        ({"argv": [""]}, InvalidRequest),
        ({"project": "nope"}, NotFound),
    ],
)
def test_bad_submissions_write_nothing(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    kwargs: dict[str, object],
    error: type[Exception],
) -> None:
    admin, _ = make_admin(sessions, clock())
    before = count(sessions, AuditEventRow)
    with pytest.raises(error), sessions() as session, session.begin():
        submit_job(
            session,
            actor=admin,
            request=make_request(**kwargs),
            partitions=PARTITIONS,  # type: ignore[arg-type]
            now=clock(),
        )
    assert count(sessions, JobRow) == 0
    assert count(sessions, AuditEventRow) == before


def test_tenants_see_only_their_projects(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision",))
    bob = make_user(sessions, "bob", clock(), projects=("speech",))
    job = make_job(sessions, alice, clock(), project="vision")
    with pytest.raises(NotFound, match="no project named 'vision'"):  # not even its name leaks
        make_job(sessions, bob, clock(), project="vision")
    with sessions() as session:
        assert [j.id for j in list_jobs(session, actor=alice)] == [job.id]
        assert list_jobs(session, actor=bob) == []
        assert [j.id for j in list_jobs(session, actor=admin)] == [job.id]
        with pytest.raises(NotFound):  # another tenant's job looks like no job at all
            get_job(session, actor=bob, job_id=job.id)
    with pytest.raises(NotFound), sessions() as session, session.begin():
        cancel_job(session, actor=bob, job_id=job.id, now=clock())
    with sessions() as session:
        assert get_job(session, actor=alice, job_id=job.id).state == JobState.PENDING


def test_cancel_pending_at_once_and_finished_is_conflict(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock())
    clock.advance(5)
    with sessions() as session, session.begin():
        cancelled = cancel_job(session, actor=admin, job_id=job.id, now=clock())
    assert cancelled.state == JobState.CANCELLED and cancelled.finished_at == clock()
    with pytest.raises(Conflict, match="already finished"), sessions() as session, session.begin():
        cancel_job(session, actor=admin, job_id=job.id, now=clock())


def test_illegal_transition_changes_nothing(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock())
    events_before = count(sessions, JobEventRow)
    with pytest.raises(IllegalTransition), sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        transition_job(session, row, JobState.SUCCEEDED, at=clock(), actor="test")
    with sessions() as session:
        assert session.get(JobRow, job.id).state == "pending"  # type: ignore[union-attr]
    assert count(sessions, JobEventRow) == events_before


def test_transitions_stamp_times(sessions: sessionmaker[Session], clock: FrozenClock) -> None:
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock())
    with sessions() as session, session.begin():
        row = session.get(JobRow, job.id)
        assert row is not None
        for state in (JobState.ADMITTED, JobState.RUNNING, JobState.SUCCEEDED):
            clock.advance(1)
            transition_job(session, row, state, at=clock(), actor="test")
    with sessions() as session:
        detail = get_job(session, actor=admin, job_id=job.id)
    assert (
        detail.admitted_at is not None
        and detail.started_at is not None
        and detail.finished_at == clock()
    )
    assert detail.admitted_at < detail.started_at < detail.finished_at
    assert [e.to_state.value for e in detail.events] == [
        "pending",
        "admitted",
        "running",
        "succeeded",
    ]


def test_logs_outputs_and_workdirs_are_tenant_private(
    sessions: sessionmaker[Session], clock: FrozenClock, tmp_path
) -> None:
    import gzip
    import io
    import tarfile

    from fabriek.core.workdir_archive import DEFAULT_LIMITS
    from fabriek.server.services.jobs import job_row_for_files
    from fabriek.server.services.workdirs import get_workdir, keep_archive, record_workdir

    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision",))
    bob = make_user(sessions, "bob", clock(), projects=("speech",))
    job = make_job(sessions, alice, clock(), project="vision")
    with sessions() as session:
        assert job_row_for_files(session, actor=alice, job_id=job.id).id == job.id
        with pytest.raises(NotFound):
            job_row_for_files(session, actor=bob, job_id=job.id)
    upload = tmp_path / "up.tar.gz"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("a.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    upload.write_bytes(buffer.getvalue())
    kept = keep_archive(upload=upload, store=tmp_path / "store", limits=DEFAULT_LIMITS)
    with sessions() as session, session.begin():
        record_workdir(session, actor=alice, workdir=kept, now=clock())
    with sessions() as session:
        assert get_workdir(session, actor=alice, digest=kept.digest).files == 1
        with pytest.raises(NotFound):  # the same bytes uploaded by someone else are not bob's
            get_workdir(session, actor=bob, digest=kept.digest)
    with pytest.raises(NotFound), sessions() as session, session.begin():
        submit_job(
            session,
            actor=bob,
            request=make_request(project="speech", workdir_digest=kept.digest),  # type: ignore[arg-type]
            partitions=PARTITIONS,
            now=clock(),
        )
