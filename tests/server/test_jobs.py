"""services/jobs.py on both databases: the project a submission that names none runs in."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Capacity
from fabriek.core.errors import InvalidRequest, ResourcesUnavailable
from fabriek.core.jobs import DEFAULT_MEMORY_BYTES, Resources
from fabriek.core.units import format_bytes_apart
from fabriek.server.services.jobs import submit_job
from tests.conftest import FrozenClock
from tests.server.factories import PARTITIONS, make_admin, make_request, make_user


def submit_without_project(sessions: sessionmaker[Session], actor, now) -> str:  # type: ignore[no-untyped-def]
    request = dataclasses.replace(make_request(), project=None)
    with sessions() as session, session.begin():
        job = submit_job(session, actor=actor, request=request, partitions=PARTITIONS, now=now)
    return job.project


@pytest.mark.parametrize(
    ("projects", "expected"),
    [
        (("vision",), "vision"),  # the only project: whatever its name
        (("default", "vision"), "default"),  # as before projects could be left out
    ],
)
def test_a_submission_without_project_runs_in_the_users_own(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    projects: tuple[str, ...],
    expected: str,
) -> None:
    make_admin(sessions, clock())
    anna = make_user(sessions, "anna", clock(), projects=projects, org="default")
    assert submit_without_project(sessions, anna, clock()) == expected


def test_several_projects_or_none_are_named_in_the_error(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    ben = make_user(sessions, "ben", clock(), projects=("vision", "nlp"))
    with pytest.raises(InvalidRequest, match=r"several projects \(nlp, vision\).*--project NAME"):
        submit_without_project(sessions, ben, clock())
    carl = make_user(sessions, "carl", clock())
    with pytest.raises(InvalidRequest, match="not a member of any project"):
        submit_without_project(sessions, carl, clock())
    assert submit_without_project(sessions, admin, clock()) == "default"


SMALL_NODES = {
    "local": PARTITIONS["local"],
    "batch": Capacity(Resources(2, 2000 * 2**20, 0), nodes=2),
}


def test_memory_the_partition_lacks_is_shown_in_numbers_that_differ(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    request = dataclasses.replace(make_request(mem=2048 * 2**20), partition="batch")
    with (
        pytest.raises(ResourcesUnavailable, match=r"asks for 2048M .* batch offers 2000M"),
        sessions() as session,
        session.begin(),
    ):
        submit_job(session, actor=admin, request=request, partitions=SMALL_NODES, now=clock())
    assert format_bytes_apart(2 * 2**30, 2 * 2**30 + 1) == ("2147483648B", "2147483649B")
    assert format_bytes_apart(2 * 2**30, 3 * 2**30) == ("2.0G", "3.0G")


@pytest.mark.parametrize(
    ("partition", "memory"), [("batch", 2000 * 2**20), ("local", 2 * 2**30), (None, 2 * 2**30)]
)
def test_the_default_memory_fits_the_partition_it_is_sent_to(
    sessions: sessionmaker[Session], clock: FrozenClock, partition: str | None, memory: int
) -> None:
    admin, _ = make_admin(sessions, clock())
    request = dataclasses.replace(
        make_request(mem=DEFAULT_MEMORY_BYTES), partition=partition, memory_given=False
    )
    with sessions() as session, session.begin():
        job = submit_job(session, actor=admin, request=request, partitions=SMALL_NODES, now=clock())
    assert job.resources.memory_bytes == memory
