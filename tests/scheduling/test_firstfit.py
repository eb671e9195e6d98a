"""Table-driven tests of the foundation's first-fit admission."""

from datetime import UTC, datetime

import pytest

from fabriek.core.jobs import Resources
from fabriek.scheduling import Capacity, PendingJob, RunningJob, Snapshot, admit

G = 2**30
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def make_snapshot(
    capacity: tuple[int, int, int],
    running: list[tuple[int, int, int, tuple[int, ...]]],
    pending: list[tuple[int, int, int]],
) -> Snapshot:
    cpus, mem, gpus = capacity
    return Snapshot(
        capacity=Capacity(Resources(cpus, mem * G, gpus), tuple(range(gpus))),
        running=tuple(
            RunningJob(100 + i, Resources(c, m * G, g), ids)
            for i, (c, m, g, ids) in enumerate(running)
        ),
        pending=tuple(
            PendingJob(i + 1, Resources(c, m * G, g), NOW) for i, (c, m, g) in enumerate(pending)
        ),
        now=NOW,
    )


CASES = [
    # (name, capacity, running, pending, admitted job ids)
    ("empty machine admits in order", (4, 8, 0), [], [(1, 1, 0), (2, 1, 0)], [1, 2]),
    ("never oversubscribes CPUs", (2, 8, 0), [], [(1, 1, 0), (1, 1, 0), (1, 1, 0)], [1, 2]),
    ("never oversubscribes memory", (8, 4, 0), [], [(1, 3, 0), (1, 3, 0)], [1]),
    ("running jobs hold their share", (4, 8, 0), [(3, 1, 0, ())], [(2, 1, 0), (1, 1, 0)], [2]),
    (
        "a smaller later job may pass a big one",
        (4, 8, 0),
        [(2, 1, 0, ())],
        [(4, 1, 0), (1, 1, 0)],
        [2],
    ),
    ("GPUs are counted", (8, 64, 2), [(1, 1, 1, (0,))], [(1, 1, 2), (1, 1, 1)], [2]),
    ("full machine admits nothing", (2, 8, 0), [(2, 1, 0, ())], [(1, 1, 0)], []),
    ("exact fit is admitted", (2, 2, 1), [], [(2, 2, 1)], [1]),
]


@pytest.mark.parametrize(
    ("name", "capacity", "running", "pending", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_admission(name: str, capacity, running, pending, expected) -> None:  # type: ignore[no-untyped-def]
    decisions = admit(make_snapshot(capacity, running, pending))
    assert [a.job_id for a in decisions.admissions] == expected
    waiting = {i + 1 for i in range(len(pending))} - set(expected)
    assert set(decisions.reasons) == waiting
    for reason in decisions.reasons.values():
        assert reason.startswith("waiting")


def test_gpus_are_assigned_distinct_free_ids() -> None:
    snapshot = make_snapshot((8, 64, 4), [(1, 1, 1, (1,))], [(1, 1, 2), (1, 1, 1), (1, 1, 1)])
    decisions = admit(snapshot)
    assigned = [a.gpu_ids for a in decisions.admissions]
    assert assigned == [(0, 2), (3,)]
    flat = [g for ids in assigned for g in ids] + [1]
    assert len(flat) == len(set(flat))


def test_reason_names_the_short_resource() -> None:
    decisions = admit(make_snapshot((4, 8, 1), [(1, 1, 1, (0,))], [(1, 1, 1)]))
    assert "GPUs" in decisions.reasons[1] and "CPUs" not in decisions.reasons[1]


def test_admit_is_pure() -> None:
    snapshot = make_snapshot((4, 8, 2), [(1, 1, 1, (0,))], [(2, 2, 1), (2, 2, 1)])
    assert admit(snapshot) == admit(snapshot)
