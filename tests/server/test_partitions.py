"""The factory now (`fabriek partitions`): nodes idle, mixed and allocated, what is busy, and each
pool's running and waiting jobs; on both databases."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Capacity
from fabriek.core.jobs import JobState, Resources
from fabriek.core.tenancy import UNALLOCATED
from fabriek.server.db.models import JobRow
from fabriek.server.services import allocations
from fabriek.server.services.partitions import factory_now
from fabriek.server.services.transitions import transition_job
from tests.conftest import FrozenClock
from tests.server.factories import G, make_admin, make_job

LOCAL = Capacity(Resources(2, 4 * G, 2), (0, 1), "test-gpu")
GPU = Capacity(Resources(2, 8 * G, 2), (), "H100", nodes=3, billing_weight=2.0)
PARTITIONS = {"local": LOCAL, "gpu": GPU}


def _admit(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    job_id: int,
    partition: str,
    nodes: list[str],
) -> None:
    with sessions() as session, session.begin():
        row = session.get(JobRow, job_id)
        assert row is not None
        transition_job(
            session,
            row,
            JobState.ADMITTED,
            at=clock(),
            actor="test",
            backend=partition,
            placement=nodes,
        )


def test_nodes_busy_and_pools_waiting_are_counted(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        grant = allocations.grant(
            session,
            actor=admin,
            project="default",
            pool="commercial",
            gpu_hours=100,
            days=30,
            now=clock(),
        )
    # Both CPUs of gpu-0 are taken, by a two-node job and one more; gpu-1 has the two-node
    # job's other half only; gpu-2 is idle.
    two_nodes = make_job(sessions, admin, clock(), cpus=1, gpus=1, name="wide")
    one = make_job(sessions, admin, clock(), cpus=1, gpus=1, name="narrow")
    here = make_job(sessions, admin, clock(), cpus=1, gpus=1, name="local one")
    with sessions() as session, session.begin():
        session.get(JobRow, two_nodes.id).nodes = 2  # type: ignore[union-attr]
        session.get(JobRow, one.id).allocation_id = grant.id  # type: ignore[union-attr]
    _admit(sessions, clock, two_nodes.id, "gpu", ["gpu-0", "gpu-1"])
    _admit(sessions, clock, one.id, "gpu", ["gpu-0"])
    _admit(sessions, clock, here.id, "local", ["local"])
    make_job(sessions, admin, clock(), gpus=2, name="waits")
    make_job(sessions, admin, clock(), gpus=1, name="waits too")

    with sessions() as session:
        now = factory_now(session, partitions=PARTITIONS)
    local, gpu = now.partitions
    assert (local.name, local.kind, gpu.name, gpu.kind) == ("local", "local", "gpu", "slurm")
    assert [(n.name, n.state(GPU)) for n in gpu.nodes] == [
        ("gpu-0", "allocated"),
        ("gpu-1", "mixed"),
        ("gpu-2", "idle"),
    ]
    assert (gpu.count("idle"), gpu.count("mixed"), gpu.count("allocated")) == (1, 1, 1)
    assert (gpu.cpus_busy, gpu.gpus_busy, gpu.running_jobs) == (3, 3, 2)
    assert gpu.memory_busy_bytes == 3 * G
    assert (local.cpus_busy, local.gpus_busy, local.count("mixed")) == (1, 1, 1)
    pools = {q.pool: q for q in now.pools}
    assert (pools["commercial"].running_jobs, pools["commercial"].running_gpus) == (1, 1)
    unallocated = pools[UNALLOCATED]
    # The two-node job holds a GPU on each of its nodes, and the local one 1.
    assert (unallocated.running_jobs, unallocated.running_gpus) == (2, 3)
    assert (unallocated.pending_jobs, unallocated.pending_gpus) == (2, 3)
    assert pools["regional"].pending_jobs == pools["regional"].running_jobs == 0


def test_an_empty_factory_is_all_idle(sessions: sessionmaker[Session], clock: FrozenClock) -> None:
    make_admin(sessions, clock())
    with sessions() as session:
        now = factory_now(session, partitions=PARTITIONS)
    assert [p.count("idle") for p in now.partitions] == [1, 3]
    assert all(q.pending_jobs == q.running_jobs == 0 for q in now.pools)
