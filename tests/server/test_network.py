"""A job's network from submission to launch, on both databases: refused at submit when it asks
for more than its project's lock or its partition allows (nothing is written), placed only on
partitions that allow it, launched with the partition's default lowered to the lock, and failed
with the reason when a lock set after submission would be broken."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Capacity
from fabriek.backends.local.backend import LocalBackend
from fabriek.backends.local.gpus import FakeInventory
from fabriek.core.errors import (
    Forbidden,
    InvalidRequest,
    NetworkNotAllowed,
    NotFound,
    ResourcesUnavailable,
)
from fabriek.core.identity import Network, NetworkPolicy
from fabriek.core.jobs import Job, JobState, Resources
from fabriek.server.controller.loop import Controller
from fabriek.server.db.models import AuditEventRow, JobEventRow, JobRow
from fabriek.server.runtime import local_network
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import get_job, submit_job
from fabriek.server.services.tenancy import get_project, update_project
from tests.conftest import FrozenClock
from tests.server.factories import LARGEST, G, make_admin, make_request, make_user
from tests.server.test_controller import settle

NONE, LOOPBACK, HOST = Network.NONE, Network.LOOPBACK, Network.HOST


def _submit(
    sessions: sessionmaker[Session],
    actor: Actor,
    clock: FrozenClock,
    partitions: Mapping[str, Capacity],
    *,
    network: Network | None,
    project: str = "default",
    partition: str | None = None,
) -> Job:
    request = replace(make_request(project=project), network=network, partition=partition)
    with sessions() as session, session.begin():
        return submit_job(session, actor=actor, request=request, partitions=partitions, now=clock())


def _lock(
    sessions: sessionmaker[Session], admin: Actor, clock: FrozenClock, project: str, to: Network
) -> None:
    with sessions() as session, session.begin():
        update_project(session, actor=admin, name=project, network_limit=to, now=clock())


def _written(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """Jobs, and job.submit audit events: what a refused submission must not leave behind."""
    with sessions() as session:
        jobs = session.scalar(select(func.count()).select_from(JobRow))
        audited = session.scalar(select(func.count()).where(AuditEventRow.action == "job.submit"))
    return int(jobs or 0), int(audited or 0)


def _capacity(default: Network, limit: Network) -> Capacity:
    return Capacity(LARGEST, network=NetworkPolicy(default, limit))


# --- submission ----------------------------------------------------------------------------------
def test_more_than_the_named_partition_allows_is_refused(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    partitions = {"closed": _capacity(NONE, LOOPBACK), "open": Capacity(LARGEST)}
    with pytest.raises(NetworkNotAllowed) as refused:
        _submit(sessions, admin, clock, partitions, network=HOST, partition="closed")
    assert refused.value.message == (
        "partition closed allows network loopback at most, and the job asks for host: ask for "
        "loopback or less, or another partition"
    )
    assert _written(sessions) == (0, 0)
    job = _submit(sessions, admin, clock, partitions, network=LOOPBACK, partition="closed")
    assert job.network == LOOPBACK and job.backend == "closed"


def test_more_than_any_partition_allows_is_refused(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    partitions = {"closed": _capacity(NONE, NONE), "shut": _capacity(NONE, LOOPBACK)}
    with pytest.raises(NetworkNotAllowed) as refused:
        _submit(sessions, admin, clock, partitions, network=HOST)
    assert refused.value.message == (
        "no partition offers network host (they offer: closed none, shut none or loopback); ask "
        "for one they offer"
    )
    assert _written(sessions) == (0, 0)
    # One partition allows it: accepted, and the engine will place it there.
    job = _submit(sessions, admin, clock, partitions, network=LOOPBACK)
    assert (job.network, job.backend) == (LOOPBACK, "")
    with sessions() as session:
        shown = get_job(session, actor=admin, job_id=job.id)
        row = session.get(JobRow, job.id)
    assert shown.network == LOOPBACK and row is not None and row.network == "loopback"
    # Asking for nothing is never refused: the default of where it lands.
    assert _submit(sessions, admin, clock, partitions, network=None).network is None


def test_a_partition_that_fits_it_must_also_allow_its_network(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    small = Capacity(Resources(1, G), network=NetworkPolicy(HOST, HOST))
    partitions = {"closed": _capacity(NONE, NONE), "small": small}
    request = replace(make_request(cpus=2, mem=G), network=HOST)
    with sessions() as session, session.begin(), pytest.raises(ResourcesUnavailable) as refused:
        submit_job(session, actor=admin, request=request, partitions=partitions, now=clock())
    assert "it fits no partition that offers network host and could never run" in str(refused.value)


def test_the_projects_lock_refuses_more_and_lowers_the_default(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision",))
    partitions = {"local": Capacity(LARGEST)}
    _lock(sessions, admin, clock, "vision", NONE)
    for asked in (HOST, LOOPBACK):
        with pytest.raises(NetworkNotAllowed) as refused:
            _submit(sessions, alice, clock, partitions, network=asked, project="vision")
        assert refused.value.message == (
            f"project 'vision' is locked to network none by an operator, and the job asks for "
            f"{asked.value}: ask for none (--network none) or less"
        )
        assert refused.value.http_status == 403
    assert _written(sessions) == (0, 0)
    assert _submit(sessions, alice, clock, partitions, network=NONE, project="vision").network
    assert _submit(sessions, alice, clock, partitions, network=None, project="vision")
    # Another project is not locked.
    assert _submit(sessions, admin, clock, partitions, network=HOST).network == HOST


def test_a_partition_that_cannot_confine_a_jobs_network(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    """As a Slurm partition today: every job there has the node's network. A job asking for
    less goes elsewhere or is refused; so is one of a project locked below it that could run
    nowhere else."""
    admin, _ = make_admin(sessions, clock())
    make_user(sessions, "alice", clock(), projects=("vision",))
    slurm = Capacity(LARGEST, network=NetworkPolicy(HOST, HOST, HOST))
    both = {"slurm": slurm, "local": Capacity(LARGEST)}
    with pytest.raises(NetworkNotAllowed, match="partition slurm cannot hold a job to less"):
        _submit(sessions, admin, clock, both, network=NONE, partition="slurm")
    assert _submit(sessions, admin, clock, both, network=NONE).network == NONE  # to local
    with pytest.raises(NetworkNotAllowed) as refused:
        _submit(sessions, admin, clock, {"slurm": slurm}, network=LOOPBACK)
    assert refused.value.message == (
        "no partition offers network loopback (they offer: slurm host); ask for one they offer"
    )
    _lock(sessions, admin, clock, "vision", NONE)
    with pytest.raises(NetworkNotAllowed) as locked:
        _submit(sessions, admin, clock, {"slurm": slurm}, network=None, project="vision")
    assert locked.value.message == (
        "project 'vision' is locked to network none by an operator, and no partition it may run "
        "on can hold a job to that (they offer: slurm host)"
    )
    assert _written(sessions) == (1, 1)  # the one that went to local
    assert _submit(sessions, admin, clock, both, network=None, project="vision")


def test_without_the_sandbox_this_machine_offers_the_hosts_network_alone() -> None:
    closed = NetworkPolicy(NONE, LOOPBACK)
    assert local_network(closed, sandbox=True) == closed
    assert local_network(NetworkPolicy(), sandbox=False).offers == {HOST}
    with pytest.raises(InvalidRequest, match="only the sandbox can hold jobs to"):
        local_network(closed, sandbox=False)


# --- the lock itself -------------------------------------------------------------------------
def test_only_operators_lock_a_project_and_every_change_is_audited(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    owner = make_user(sessions, "olga", clock(), projects=("vision",), org_role="owner")
    outsider = make_user(sessions, "oscar", clock())
    with sessions() as session, pytest.raises(Forbidden, match="only operators lock"):
        update_project(session, actor=owner, name="vision", network_limit=NONE, now=clock())
    with sessions() as session, pytest.raises(NotFound):  # not theirs: as if absent
        update_project(session, actor=outsider, name="vision", network_limit=NONE, now=clock())
    _lock(sessions, admin, clock, "vision", NONE)
    _lock(sessions, admin, clock, "vision", NONE)  # unchanged: not audited again
    with sessions() as session:
        assert get_project(session, actor=owner, name="vision").network_limit == NONE
    _lock(sessions, admin, clock, "vision", HOST)  # host lifts the lock
    with sessions() as session:
        assert get_project(session, actor=owner, name="vision").network_limit is None
        events = session.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.action == "project.network_limit")
            .order_by(AuditEventRow.id)
        ).all()
    assert [(e.actor, e.details["network_limit"], e.details["previous"]) for e in events] == [
        ("user:admin", "none", None),
        ("user:admin", None, "none"),
    ]
    # Nothing given: nothing changes, and anyone who sees the project may ask.
    with sessions() as session:
        same = update_project(session, actor=owner, name="vision", now=clock())
    assert same.network_limit is None


# --- admission and launch ------------------------------------------------------------------------
@contextmanager
def _controller(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    clock: FrozenClock,
    networks: Mapping[str, NetworkPolicy],
) -> Iterator[Controller]:
    """A controller over real local backends, one per partition in `networks`."""
    backends = {
        name: LocalBackend(
            jobs_dir=tmp_path / name,
            resources=Resources(2, 4 * G),
            gpus=FakeInventory(0).detect(),
            kill_grace_seconds=0.5,
        )
        for name in networks
    }
    try:
        yield Controller(
            sessions=sessions,
            backends=backends,
            clock=clock,
            workdirs=tmp_path / "workdirs",
            networks=networks,
        )
    finally:
        for backend in backends.values():
            backend.launcher.close()


def _row(sessions: sessionmaker[Session], job_id: int) -> JobRow:
    with sessions() as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        return row


def test_jobs_start_where_their_network_is_allowed_with_what_they_got(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """`closed` (default none, at most loopback) comes first, so the engine tries it first."""
    admin, _ = make_admin(sessions, clock())
    networks = {"closed": NetworkPolicy(NONE, LOOPBACK), "open": NetworkPolicy(LOOPBACK, HOST)}
    with _controller(sessions, tmp_path, clock, networks) as controller:
        partitions = controller.capacities()
        assert partitions["closed"].network == networks["closed"]
        wants_host = _submit(sessions, admin, clock, partitions, network=HOST)
        wants_nothing = _submit(sessions, admin, clock, partitions, network=None)
        jobs = settle(controller, sessions, admin, [wants_host.id, wants_nothing.id])
    assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert [(j.backend, j.network) for j in jobs] == [("open", HOST), ("closed", NONE)]


def test_a_job_that_asked_for_nothing_gets_the_default_lowered_to_the_lock(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    with _controller(sessions, tmp_path, clock, {"local": NetworkPolicy()}) as controller:
        job = _submit(sessions, admin, clock, controller.capacities(), network=None)
        _lock(sessions, admin, clock, "default", LOOPBACK)  # after it was submitted
        [done] = settle(controller, sessions, admin, [job.id])
    assert (done.state, done.network) == (JobState.SUCCEEDED, LOOPBACK)


def test_a_locked_projects_job_goes_where_its_network_can_be_held_to_the_lock(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """`open` (first) gives every job the host's network, as a Slurm partition does today: a
    job of a project locked to none that asked for nothing must start on `closed`, not fail."""
    admin, _ = make_admin(sessions, clock())
    networks = {"open": NetworkPolicy(HOST, HOST, HOST), "closed": NetworkPolicy()}
    with _controller(sessions, tmp_path, clock, networks) as controller:
        free = _submit(sessions, admin, clock, controller.capacities(), network=None)
        _lock(sessions, admin, clock, "default", NONE)
        locked = _submit(sessions, admin, clock, controller.capacities(), network=None)
        jobs = settle(controller, sessions, admin, [free.id, locked.id])
    assert [(j.state, j.backend, j.network) for j in jobs] == [
        (JobState.SUCCEEDED, "closed", NONE),  # it was locked before it started
        (JobState.SUCCEEDED, "closed", NONE),
    ]


def test_a_lock_set_after_submission_fails_the_job_before_it_starts(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    marker = tmp_path / "ran"
    with _controller(sessions, tmp_path, clock, {"local": NetworkPolicy()}) as controller:
        request = replace(make_request(argv=["touch", str(marker)]), network=HOST)
        with sessions() as session, session.begin():
            job = submit_job(
                session,
                actor=admin,
                request=request,
                partitions=controller.capacities(),
                now=clock(),
            )
        _lock(sessions, admin, clock, "default", NONE)
        [done] = settle(controller, sessions, admin, [job.id])
    assert done.state == JobState.FAILED
    assert done.reason == (
        "not started: project 'default' is locked to network none by an operator, and the job "
        "asks for host: ask for none (--network none) or less"
    )
    assert done.network == HOST  # what it asked for; it never ran
    assert not marker.exists() and _row(sessions, job.id).handle is None
    with sessions() as session:
        moves = session.scalars(
            select(JobEventRow.to_state)
            .where(JobEventRow.job_id == job.id)
            .order_by(JobEventRow.id)
        ).all()
    assert moves == ["pending", "admitted", "failed"]


def test_a_partition_limit_lowered_after_submission_keeps_the_job_waiting_with_the_reason(
    sessions: sessionmaker[Session], tmp_path: Path, clock: FrozenClock
) -> None:
    """The operator restarted the server with a lower limit in the partitions file."""
    admin, _ = make_admin(sessions, clock())
    with _controller(sessions, tmp_path, clock, {"local": NetworkPolicy()}) as before:
        job = _submit(sessions, admin, clock, before.capacities(), network=HOST)
    with _controller(sessions, tmp_path, clock, {"local": NetworkPolicy(NONE, NONE)}) as after:
        after.run_pass()
    row = _row(sessions, job.id)
    assert row.state == JobState.PENDING.value
    assert row.reason == (
        "waiting: no partition it fits offers network host (they offer: local none); it can "
        "never start as it is"
    )
