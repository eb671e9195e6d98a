"""A job that could never start is refused at submission (issue 21, item 10): one that may not
be preempted and needs more GPUs than its pool's whole guarantee. Table-driven, on both
databases, on the issue's factory of 4 GPUs with the seeded pools (regional 25 %, EuroHPC 50 %,
national 15 %, commercial 10 %: in whole GPUs 1, 2, 1, 0)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Capacity
from fabriek.core.errors import BeyondGuarantee, ResourcesUnavailable, error_from_code
from fabriek.core.jobs import Resources
from fabriek.core.tenancy import OrgKind
from fabriek.server.db.models import AllocationRow, JobRow
from fabriek.server.services import allocations, tenancy
from fabriek.server.services.actors import Actor
from fabriek.server.services.jobs import submit_job
from tests.conftest import FrozenClock
from tests.server.factories import G, make_admin, make_request, make_user

FOUR_GPUS = {"local": Capacity(Resources(8, 32 * G, 4), gpu_type="test-gpu")}

# pool, GPUs, preemptible, then None (accepted) or what the refusal must say
CASES = [
    ("commercial", 1, False, ["more than pool commercial's whole guarantee (0 GPUs)", "--preemptible"]),
    ("commercial", 1, True, None),
    ("commercial", 0, False, None),  # CPU work: no pool limits it
    ("regional", 1, False, None),
    ("regional", 2, False, ["guarantee (1 GPUs)", "ask for at most 1 GPUs", "--preemptible"]),
    ("regional", 2, True, None),
    ("eurohpc", 2, False, None),
    ("eurohpc", 3, False, ["guarantee (2 GPUs)", "at most 2 GPUs"]),
    ("national", 1, False, None),
    (None, 4, False, None),  # without an allocation a GPU job is preemptible anyway
]  # fmt: skip


def _factory(sessions: sessionmaker[Session], clock: FrozenClock) -> tuple[Actor, dict[str, int]]:
    """alice, manager of project vision of a verified Groningen university, with an allocation
    in each seeded pool."""
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
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
        tenancy.create_project(session, actor=alice, name="vision", organisation="rug", now=clock())
        granted = {
            pool: allocations.grant(
                session,
                actor=admin,
                project="vision",
                pool=pool,
                gpu_hours=100.0,
                days=30,
                now=clock(),
            ).id
            for pool in ("regional", "eurohpc", "national", "commercial")
        }
    return alice, granted


@pytest.mark.parametrize(("pool", "gpus", "preemptible", "refusal"), CASES)
def test_a_job_beyond_its_pools_whole_guarantee_is_refused_unless_preemptible(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    pool: str | None,
    gpus: int,
    preemptible: bool,
    refusal: list[str] | None,
) -> None:
    alice, granted = _factory(sessions, clock)
    request = replace(
        make_request(project="vision", gpus=gpus, cpus=1, mem=G),
        allocation_id=granted[pool] if pool else None,
        preemptible=preemptible,
    )

    def submit() -> object:
        with sessions() as session, session.begin():
            return submit_job(
                session, actor=alice, request=request, partitions=FOUR_GPUS, now=clock()
            )

    if refusal is None:
        job = submit()
        assert job is not None
        return
    with pytest.raises(BeyondGuarantee) as refused:
        submit()
    for words in refusal:
        assert words in refused.value.message
    if "at most" not in " ".join(refusal):
        assert "at most" not in refused.value.message  # never "ask for at most 0 GPUs"
    # Nothing was written: no job, and the allocation holds no GPU-hours for it.
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 0
        assert session.scalar(
            select(AllocationRow.held_gpu_hours).where(AllocationRow.id == granted[pool or ""])
        ) in (0, 0.0, None)


def test_the_refusal_is_a_stable_code_the_sdk_rebuilds() -> None:
    assert BeyondGuarantee.code == "beyond_guarantee"
    assert BeyondGuarantee.http_status == 422
    rebuilt = error_from_code("beyond_guarantee", "it could never start")
    assert isinstance(rebuilt, BeyondGuarantee)
    assert isinstance(rebuilt, ResourcesUnavailable)  # who caught the broader one still does


def test_a_job_on_a_named_partition_is_judged_by_that_partitions_gpu_type(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    """Two GPU types: regional is owed 1 of each (25 % of 4); a 2-GPU job that may run on
    either is still beyond it, on both."""
    alice, granted = _factory(sessions, clock)
    two_types = {
        "a100": Capacity(Resources(8, 32 * G, 4), gpu_type="a100"),
        "h100": Capacity(Resources(8, 32 * G, 4), gpu_type="h100"),
    }
    for partition in ("a100", "h100", None):
        request = replace(
            make_request(project="vision", gpus=2, cpus=1, mem=G),
            allocation_id=granted["regional"],
            partition=partition,
        )
        with pytest.raises(BeyondGuarantee), sessions() as session, session.begin():
            submit_job(session, actor=alice, request=request, partitions=two_types, now=clock())
    request = replace(
        make_request(project="vision", gpus=2, cpus=1, mem=G), allocation_id=granted["eurohpc"]
    )
    with sessions() as session, session.begin():
        submit_job(session, actor=alice, request=request, partitions=two_types, now=clock())
