"""The engine places a job only on partitions that offer a network it may have: the one it asked
for, or (asking for none) one at or below its project's lock; a job with neither goes anywhere
(it gets the default of where it lands)."""

from __future__ import annotations

from fabriek.core.identity import Network, NetworkPolicy
from fabriek.scheduling.engine import decide
from fabriek.scheduling.model import (
    Node,
    Partition,
    PendingJob,
    Placement,
    Pool,
    Request,
    RunningJob,
    Snapshot,
)

G = 2**30
NOW = 1_000_000.0
POOLS = (Pool("p", 1.0),)


def partition(
    name: str, limit: Network, *, least: Network = Network.NONE, gpus: int = 0, nodes: int = 1
) -> Partition:
    names = [name] if nodes == 1 else [f"{name}-{i}" for i in range(nodes)]
    return Partition(
        name,
        "h100" if gpus else "",
        tuple(Node(n, gpus, 4, 8 * G) for n in names),
        networks=NetworkPolicy(least, limit, least).offers,
    )


def job(
    job_id: int,
    network: Network | frozenset[Network] | None,
    *,
    gpus: int = 0,
    cpus: int = 1,
    partition: str | None = None,
) -> PendingJob:
    """`network`: what it asked for, or the set its project's lock allows."""
    networks = frozenset({network}) if isinstance(network, Network) else network
    request = Request(gpus, cpus, G, 1, None, 600.0, partition, networks)
    return PendingJob(job_id, "x", "p", None, request, NOW - 100 + job_id, preemptible=True)


def placements(*partitions: Partition, pending: tuple[PendingJob, ...]) -> dict[int, str]:
    decisions = decide(Snapshot(NOW, partitions, POOLS, pending=pending))
    return {a.job_id: a.placement.partition for a in decisions.admissions}


CLOSED = partition("closed", Network.NONE)  # first: the engine tries it first
SHUT = partition("shut", Network.LOOPBACK)
OPEN = partition("open", Network.HOST)
SLURM = partition("slurm", Network.HOST, least=Network.HOST)  # cannot confine a job's network


def test_each_job_lands_where_its_network_is_allowed() -> None:
    pending = (
        job(1, Network.LOOPBACK),
        job(2, Network.HOST),
        job(3, None),
        job(4, Network.NONE),
    )
    assert placements(CLOSED, SHUT, OPEN, pending=pending) == {
        1: "shut",
        2: "open",
        3: "closed",
        4: "closed",
    }


def test_less_than_a_partition_can_hold_a_job_to_goes_elsewhere() -> None:
    """`slurm` gives every job the host's network: a job that asked for less, or whose project
    is locked below it, runs elsewhere; one asking for host or for nothing may run there."""
    locked = frozenset({Network.NONE, Network.LOOPBACK})
    pending = (job(1, Network.NONE), job(2, locked), job(3, Network.HOST), job(4, None))
    assert placements(SLURM, SHUT, pending=pending) == {
        1: "shut",
        2: "shut",
        3: "slurm",
        4: "slurm",
    }
    decisions = decide(Snapshot(NOW, (SLURM,), POOLS, pending=(job(5, locked),)))
    assert decisions.reasons[5] == (
        "waiting: no partition it fits offers network none or loopback (they offer: slurm host); "
        "it can never start as it is"
    )


def test_gpu_jobs_too() -> None:
    closed = partition("closed", Network.NONE, gpus=2, nodes=2)
    open_ = partition("open", Network.HOST, gpus=2, nodes=2)
    pending = (job(1, Network.HOST, gpus=2), job(2, None, gpus=2))
    assert placements(closed, open_, pending=pending) == {1: "open", 2: "closed"}


def test_a_job_waits_for_an_allowed_partition_although_another_has_room() -> None:
    """`open` is full: the host job waits rather than run on `closed` (with more network than
    `closed` allows); a job that asked for none takes `closed`."""
    full = job(9, Network.HOST, cpus=4)
    on_open = RunningJob(9, "x", "p", None, full.request, Placement("open", ("open",)), NOW - 10)
    decisions = decide(
        Snapshot(
            NOW,
            (CLOSED, OPEN),
            POOLS,
            running=(on_open,),
            pending=(job(1, Network.HOST), job(2, None)),
        )
    )
    assert {a.job_id: a.placement.partition for a in decisions.admissions} == {2: "closed"}
    assert decisions.reasons[1] == "waiting for CPUs or memory to free up on the nodes"


def test_a_job_no_partition_allows_is_set_aside_with_its_reason() -> None:
    """Set aside, as a job too large for every partition: it does not block its pool."""
    decisions = decide(
        Snapshot(NOW, (CLOSED, SHUT), POOLS, pending=(job(1, Network.HOST), job(2, None)))
    )
    assert [a.job_id for a in decisions.admissions] == [2]
    assert decisions.reasons[1] == (
        "waiting: no partition it fits offers network host (they offer: closed none, shut none "
        "or loopback); it can never start as it is"
    )


def test_a_named_partition_whose_limit_was_lowered() -> None:
    decisions = decide(
        Snapshot(NOW, (CLOSED, OPEN), POOLS, pending=(job(1, Network.HOST, partition="closed"),))
    )
    assert not decisions.admissions
    assert "no partition it fits offers network host" in decisions.reasons[1]


def test_too_large_is_still_said_so() -> None:
    decisions = decide(Snapshot(NOW, (CLOSED, OPEN), POOLS, pending=(job(1, None, cpus=64),)))
    assert decisions.reasons[1] == (
        "waiting: no partition has room for it even when empty; it can never start"
    )
