"""The retention policy and the disk quota, with the real local backend, on both databases:
jobs' working copies go when they end, their outputs and logs after the retention period,
and a project whose jobs write past its quota has them stopped and its submissions refused."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.local.backend import LocalBackend
from fabriek.backends.local.gpus import FakeInventory
from fabriek.core.errors import FilesRemoved, NotFound, QuotaExceeded
from fabriek.core.jobs import Job, JobState, Resources
from fabriek.core.workdir_archive import Limits
from fabriek.server.controller.loop import Controller, launch_spec
from fabriek.server.db.models import AuditEventRow, JobRow, ProjectRow
from fabriek.server.services import job_files, workdirs
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import cancel_job, get_job, submit_job
from fabriek.server.services.retention import Policy, Retention, Round, run_instances
from tests.conftest import FrozenClock
from tests.helpers import wait_for
from tests.server.factories import PARTITIONS, G, make_admin, make_job, make_request, make_user

LIMITS = {"max_bytes": 10**9, "max_entries": 1000}


def make_controller(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock, policy: Policy
) -> tuple[Controller, Retention, LocalBackend]:
    backend = LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(2, 4 * G),
        gpus=FakeInventory(0).detect(),
        kill_grace_seconds=0.5,
    )
    retention = Retention(
        sessions=sessions, backends={"local": backend}, clock=clock, policy=policy
    )
    controller = Controller(
        sessions=sessions,
        backend=backend,
        clock=clock,
        workdirs=tmp_path / "workdirs",
        retention=retention,
    )
    return controller, retention, backend


def run_until(
    controller: Controller, sessions: sessionmaker[Session], actor: Actor, job_id: int, done: str
) -> Job:
    """Passes (as the loop runs them, driven by the test) until the job is final, or running
    when `done` is 'running'."""

    def reached() -> Job | None:
        controller.run_pass()
        with sessions() as session:
            job = get_job(session, actor=actor, job_id=job_id)
        return job if job.state.is_final or job.state.value == done else None

    return wait_for(reached, timeout=30, what=f"job {job_id} to be {done}")


def row(sessions: sessionmaker[Session], job_id: int) -> JobRow:
    with sessions() as session:
        found = session.get(JobRow, job_id)
        assert found is not None
        session.expunge(found)
        return found


def run_dir(row: JobRow) -> Path:
    assert row.handle is not None
    return Path(row.handle["dir"])


WRITER = (
    'for i in $(seq 1 200); do echo scratch > "tmp-$i"; done; '
    'echo model > "$FABRIEK_OUTPUT_DIR/model.txt"'
)


def test_work_copies_go_when_the_job_ends_and_outputs_stay(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """One job left 200,000 inodes in its working copy, for ever. Now it goes as the job ends
    (the pass that sees the end starts the round), a link the job left in place of its working
    copy is removed without following it, and the outputs stay."""
    admin, _ = make_admin(sessions, clock())
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not the job's")
    controller, retention, _ = make_controller(sessions, tmp_path, clock, Policy())
    job = make_job(sessions, admin, clock(), argv=["sh", "-c", WRITER])
    # In its sandbox a job cannot replace its working copy (a mount point there): the link is
    # planted from outside while it runs, as a job without the sandbox could plant it.
    waits = 'cd /; while [ ! -e "$FABRIEK_OUTPUT_DIR/go" ]; do sleep 0.05; done'
    linker = make_job(sessions, admin, clock(), argv=["sh", "-c", waits])
    assert run_until(controller, sessions, admin, linker.id, "running").state.value == "running"
    work = run_dir(row(sessions, linker.id)) / "work"
    shutil.rmtree(work)
    work.symlink_to(victim)
    (run_dir(row(sessions, linker.id)) / "output" / "go").touch()
    for job_id in (job.id, linker.id):
        assert run_until(controller, sessions, admin, job_id, "final").state == JobState.SUCCEEDED
    retention.wait(10)
    controller.run_pass()  # a second round, should one job have ended during the first
    retention.wait(10)
    done = row(sessions, job.id)
    assert done.tidied_at is not None and not (run_dir(done) / "work").exists()
    assert (run_dir(done) / "output" / "model.txt").read_text() == "model\n"
    assert done.disk_bytes is not None and done.disk_bytes > 0
    assert not os.path.lexists(run_dir(row(sessions, linker.id)) / "work")
    assert (victim / "keep.txt").read_text() == "not the job's"


def test_the_operator_may_keep_work_copies(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller, retention, _ = make_controller(
        sessions, tmp_path, clock, Policy(keep_work_dirs=True)
    )
    job = make_job(sessions, admin, clock(), argv=["sh", "-c", WRITER])
    run_until(controller, sessions, admin, job.id, "final")
    retention.wait(10)
    retention.run(clock())
    done = row(sessions, job.id)
    assert done.tidied_at is not None and (run_dir(done) / "work" / "tmp-200").exists()


def test_outputs_and_logs_go_after_the_retention_period_with_an_audit_event(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller, retention, backend = make_controller(
        sessions, tmp_path, clock, Policy(retention_days=30)
    )
    never = make_job(sessions, admin, clock())  # cancelled before it ran: it has no files
    with sessions() as session, session.begin():
        cancel_job(session, actor=admin, job_id=never.id, now=clock())
    job = make_job(sessions, admin, clock(), argv=["sh", "-c", WRITER + "; echo said"])
    run_until(controller, sessions, admin, job.id, "final")
    ended = row(sessions, job.id)
    assert ended.finished_at is not None
    retention.wait(10)
    clock.now = ended.finished_at + timedelta(days=30) - timedelta(minutes=1)
    assert retention.run(clock()).expired == 0  # a minute short of 30 days: kept
    assert (run_dir(ended) / "output" / "model.txt").exists()
    clock.advance(120)
    assert retention.run(clock()).expired == 1
    gone = row(sessions, job.id)
    assert gone.files_removed_at == clock() and gone.disk_bytes == 0
    assert not run_dir(gone).exists()  # outputs, logs, everything of the job's run
    with sessions() as session:
        events = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "job.outputs_removed")
        ).all()
    assert [(e.actor, e.target_id) for e in events] == [("controller", str(job.id))]
    assert "30 days" in events[0].details["reason"]
    with pytest.raises(FilesRemoved, match=f"removed on {clock():%Y-%m-%d}"):
        job_files.outputs_archive(
            backend, job_id=job.id, handle=gone.handle, removed_at=gone.files_removed_at, **LIMITS
        )
    assert retention.run(clock()).expired == 0  # once


def test_outputs_kept_for_ever_with_zero_days(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    controller, retention, _ = make_controller(sessions, tmp_path, clock, Policy(retention_days=0))
    job = make_job(sessions, admin, clock(), argv=["sh", "-c", WRITER])
    run_until(controller, sessions, admin, job.id, "final")
    retention.wait(10)
    clock.advance(3650 * 86400)
    assert retention.run(clock()).expired == 0
    assert (run_dir(row(sessions, job.id)) / "output" / "model.txt").exists()


FLOOD = 'head -c 3000000 /dev/urandom > "$FABRIEK_OUTPUT_DIR/big.bin"; touch written; sleep 60'


def test_a_job_writing_past_its_projects_quota_is_stopped_and_submissions_refused(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    other = make_user(sessions, "other", clock(), projects=("theirs",))
    quota = 2 * 2**20
    controller, retention, _ = make_controller(sessions, tmp_path, clock, Policy(quota_bytes=quota))
    flood = make_job(sessions, admin, clock(), argv=["sh", "-c", FLOOD], time_limit_s=120)
    run_until(controller, sessions, admin, flood.id, "running")
    wait_for(
        lambda: (run_dir(row(sessions, flood.id)) / "work" / "written").exists(),
        what="the job to have written 3 MB",
    )
    retention.wait(10)  # a round the passes started may have measured it already
    done = retention.run(clock())
    assert done.over_quota["default"] >= 3_000_000, done
    stopping = row(sessions, flood.id)
    assert stopping.stop_reason is not None and stopping.cancel_requested_at is not None
    ended = run_until(controller, sessions, admin, flood.id, "final")
    assert ended.state == JobState.FAILED
    # (2.9M, or less where a round stopped it while it wrote)
    assert re.match(
        r"output quota exceeded: \d\.\dM of 2\.0M \(project default", ended.reason or ""
    )
    with sessions() as session:
        assert (
            session.scalar(select(ProjectRow.disk_bytes).where(ProjectRow.name == "default")) or 0
        ) >= 3_000_000
        actions = session.scalars(
            select(AuditEventRow.action).where(AuditEventRow.target_id == str(flood.id))
        ).all()
    assert "job.quota_stop" in actions
    with (
        sessions() as session,
        session.begin(),
        pytest.raises(QuotaExceeded, match=r"2\.9M of its 2\.0M"),
    ):
        submit_job(
            session,
            actor=admin,
            request=make_request(),
            partitions=PARTITIONS,
            now=clock(),
            disk_quota_bytes=quota,
        )
    with sessions() as session, session.begin():  # another project is not held back
        submit_job(
            session,
            actor=other,
            request=make_request(project="theirs"),
            partitions=PARTITIONS,
            now=clock(),
            disk_quota_bytes=quota,
        )


def test_the_retention_thread_runs_at_most_once_a_minute_and_when_jobs_end(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    _, retention, _ = make_controller(sessions, tmp_path, clock, Policy())
    rounds: list[tuple[datetime, bool]] = []

    def count(now: datetime, *, full: bool = True) -> Round:
        rounds.append((now, full))
        return Round()

    retention.run = count  # type: ignore[method-assign]
    for ended, seconds in [(False, 0), (False, 30), (True, 1), (False, 30), (False, 0)]:
        clock.advance(seconds)
        retention.step(ended=ended)
        retention.wait(5)
    start = rounds[0][0]
    assert [(now - start).total_seconds() for now, _ in rounds] == [0, 31, 61]
    assert [full for _, full in rounds] == [True, False, True]


def test_run_instances_name_every_run_as_launches_do(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    job = make_job(sessions, admin, clock())
    with sessions() as session:
        job_row = session.get(JobRow, job.id)
        assert job_row is not None
        names = []
        for preemptions in range(3):
            job_row.preemptions = preemptions
            names.append(launch_spec(job_row, Path("/nowhere")).instance)
    assert run_instances(job_row.submitted_at, 2) == names


def _upload(
    sessions: sessionmaker[Session], store: Path, actor: Actor, content: bytes, at: datetime
) -> str:
    """A workdir archive holding one file with `content`, uploaded by `actor` at `at`."""
    buffer = io.BytesIO()
    # gzip's header holds a time (tarfile's w:gz takes the clock's): fixed, so that the same
    # content is the same archive, and digest, in a later second too.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        info = tarfile.TarInfo("train.py")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    store.mkdir(parents=True, exist_ok=True)
    upload = store / f"{len(os.listdir(store))}.upload"
    upload.write_bytes(buffer.getvalue())
    kept = workdirs.keep_archive(upload=upload, store=store, limits=Limits(10**6, 100))
    with sessions() as session, session.begin():
        return workdirs.record_workdir(session, actor=actor, workdir=kept, now=at).digest


def test_workdirs_no_job_used_within_the_retention_period_are_removed_and_uploaded_again(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """Uploaded workdirs were kept for ever. One that no unfinished job uses, and no job
    submitted in the retention period used, goes (audited); one a waiting job needs, or one
    a job used lately, stays. The client uploads a removed one again, and it is kept anew."""
    admin, _ = make_admin(sessions, clock())
    store = tmp_path / "workdirs"
    retention = Retention(
        sessions=sessions, backends={}, clock=clock, policy=Policy(), workdirs=store
    )
    unused, waiting, lately = (
        _upload(sessions, store, admin, c, clock()) for c in (b"1", b"2", b"3")
    )
    make_job(sessions, admin, clock(), workdir_digest=waiting)  # never admitted: still waits
    clock.advance(20 * 86400)
    used = make_job(sessions, admin, clock(), workdir_digest=lately)
    with sessions() as session, session.begin():
        cancel_job(session, actor=admin, job_id=used.id, now=clock())  # ended
    clock.advance(9 * 86400)
    assert retention.run(clock()).workdirs_removed == 0  # 29 days: all kept
    clock.advance(2 * 86400)
    assert retention.run(clock()).workdirs_removed == 1
    assert not workdirs.archive_path(store, unused).exists()
    for kept in (waiting, lately):
        assert workdirs.archive_path(store, kept).exists()
    with sessions() as session:
        with pytest.raises(NotFound, match="upload it first"):
            workdirs.check_workdir(session, actor=admin, digest=unused)
        event = session.scalars(
            select(AuditEventRow).where(AuditEventRow.action == "workdir.removed")
        ).one()
    assert (event.actor, event.target_id) == ("controller", unused)  # the system
    assert "30 days" in event.details["reason"]
    # Uploaded again: stored from now, not removed by the next round
    assert _upload(sessions, store, admin, b"1", clock()) == unused
    assert retention.run(clock()).workdirs_removed == 0
    with sessions() as session:
        workdirs.check_workdir(session, actor=admin, digest=unused)
    clock.advance(20 * 86400)  # the job that used `lately` was submitted 51 days ago
    assert retention.run(clock()).workdirs_removed == 1
    assert not workdirs.archive_path(store, lately).exists()
    assert workdirs.archive_path(store, waiting).exists()
