"""The pool-aware admission engine, table by table: guarantees, borrowing and reclaim, fair share,
backfill, gang admission, allocation limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from fabriek.scheduling.engine import decide
from fabriek.scheduling.model import (
    Allocation,
    Decisions,
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
POOLS = (
    Pool("regional", 0.25),
    Pool("eurohpc", 0.50),
    Pool("national", 0.15),
    Pool("commercial", 0.10),
)


def h100(nodes: int, gpus: int = 8) -> Partition:
    return Partition(
        "gpu",
        "h100",
        tuple(Node(f"n{i:03}", gpus, 64, 512 * G) for i in range(nodes)),
    )


def job(
    job_id: int,
    pool: str = "eurohpc",
    *,
    gpus: int = 1,
    nodes: int = 1,
    project: str = "p",
    at: float | None = None,
    limit: float = 3600,
    preemptible: bool = False,
    priority: int = 0,
    allocation: int | None = None,
) -> PendingJob:
    return PendingJob(
        id=job_id,
        project=project,
        pool=pool,
        allocation=allocation,
        request=Request(gpus_per_node=gpus, cpus_per_node=1, nodes=nodes, time_limit_s=limit),
        submitted_at=NOW - 1000 + job_id if at is None else at,
        priority=priority,
        preemptible=preemptible,
    )


def running(
    pending: PendingJob, nodes: tuple[str, ...], *, started: float = NOW - 10, borrowed=False
) -> RunningJob:
    return RunningJob(
        id=pending.id,
        project=pending.project,
        pool=pending.pool,
        allocation=pending.allocation,
        request=pending.request,
        placement=Placement("gpu", nodes),
        started_at=started,
        preemptible=pending.preemptible,
        borrowed=borrowed,
    )


ONE_POOL = (Pool("eurohpc", 1.0),)  # for tests of order, backfill and gangs alone


def snap(partition: Partition, pending=(), run=(), pools=POOLS, **kw) -> Snapshot:  # type: ignore[no-untyped-def]
    return Snapshot(
        now=NOW,
        partitions=(partition,),
        pools=pools,
        pending=tuple(pending),
        running=tuple(run),
        **kw,
    )


def admitted(d: Decisions) -> list[int]:
    return [a.job_id for a in d.admissions]


def test_guarantees_in_whole_gpus_by_largest_remainder() -> None:
    # 32 GPUs: 8, 16, 4.8 and 3.2 -> 8, 16, 5, 3. Each pool, alone and non-preemptible, gets
    # exactly its guarantee.
    for pool, owed in (("regional", 8), ("eurohpc", 16), ("national", 5), ("commercial", 3)):
        d = decide(snap(h100(4), [job(i, pool) for i in range(40)]))
        assert len(d.admissions) == owed, pool
        assert all(not a.borrowed for a in d.admissions)
        assert (
            d.reasons[owed]
            == f"waiting: pool {pool} uses {owed} of its {owed} guaranteed h100 GPUs; only preemptible jobs may borrow beyond it"
        )
        assert d.reasons[owed + 1] == f"waiting behind job {owed}, first in pool {pool}'s queue"


def test_every_pool_with_demand_gets_its_guarantee_first() -> None:
    pending = [job(i, "eurohpc", preemptible=True) for i in range(40)]
    pending += [job(100 + i, "regional") for i in range(10)]
    d = decide(snap(h100(4), pending))
    regional = [i for i in admitted(d) if i >= 100]
    assert len(regional) == 8  # its guarantee, though eurohpc's jobs are older
    # eurohpc: 16 of its own, and borrows what pools without demand leave idle (national 5 and
    # commercial 3); regional's idle guarantee is not lent, since regional has demand.
    eurohpc = [a for a in d.admissions if a.job_id < 100]
    assert len(eurohpc) == 24 and sum(a.borrowed for a in eurohpc) == 8


def test_jobs_larger_than_every_guarantee_do_not_leave_an_idle_machine_idle() -> None:
    """Every pool waits with a job larger than its whole guarantee: none could ever start within
    it, so those guarantees are lent, one of them starts at once (borrowing), and the others are
    not preempted for (found by the simulator on the ITP trace)."""
    pending = [job(1, "regional", gpus=8, nodes=4, preemptible=True),
               job(2, "eurohpc", gpus=8, nodes=4, preemptible=True),
               job(3, "national", gpus=8, nodes=4, preemptible=True)]  # fmt: skip
    d = decide(snap(h100(4), pending))
    [first] = d.admissions
    assert first.borrowed
    started = next(j for j in pending if j.id == first.job_id)
    lent = [running(started, tuple(f"n{i:03}" for i in range(4)), borrowed=True)]
    rest = [j for j in pending if j is not started]
    d2 = decide(snap(h100(4), rest, lent))
    assert admitted(d2) == [] and d2.preemptions == []


def test_reclaim_preempts_the_newest_borrowed_work_then_no_ping_pong() -> None:
    machine = h100(4)
    # eurohpc holds all 32 GPUs: 16 within its guarantee, 16 borrowed (preemptible).
    own = [
        running(job(i, preemptible=True), (f"n{i // 8:03}",), started=NOW - 100 + i)
        for i in range(16)
    ]
    lent = [
        running(
            job(16 + i, preemptible=True),
            (f"n{2 + i // 8:03}",),
            started=NOW - 50 + i,
            borrowed=True,
        )
        for i in range(16)
    ]
    wants = [job(100 + i, "regional") for i in range(3)]
    d = decide(snap(machine, wants, own + lent))
    assert admitted(d) == []
    assert [p.job_id for p in d.preemptions] == [31, 30, 29]  # the newest borrowed first
    assert "reclaiming" in d.reasons[100]
    # Next cycle: they are stopping. Nothing more is preempted for the same need.
    stopping = [replace(r, preempting=True) if r.id in (29, 30, 31) else r for r in own + lent]
    d2 = decide(snap(machine, wants, stopping))
    assert d2.preemptions == [] and admitted(d2) == []
    # They stopped and wait again (keeping their place); regional starts, they do not borrow
    # the GPUs back while regional wants them.
    gone = [r for r in own + lent if r.id not in (29, 30, 31)]
    requeued = [job(i, preemptible=True) for i in (29, 30, 31)]
    d3 = decide(snap(machine, requeued + wants, gone))
    assert sorted(admitted(d3)) == [100, 101, 102]
    assert d3.preemptions == []


def test_reclaim_preempts_only_the_work_on_the_nodes_it_takes() -> None:
    """Victims are released newest first until the head fits; one released on a node the head
    does not start on made no room and keeps running (the simulator found more than half of
    Philly's preemptions were such: each a run thrown away for nothing)."""
    machine = h100(4)  # 32 GPUs: eurohpc is owed 16, regional 8
    run = [
        running(job(1, gpus=8), ("n000",)),
        running(job(2, gpus=8), ("n001",)),
        running(job(3, gpus=8, preemptible=True), ("n002",), started=NOW - 40, borrowed=True),
        running(job(4, gpus=7, preemptible=True), ("n003",), started=NOW - 60, borrowed=True),
        running(job(5, preemptible=True), ("n003",), started=NOW - 10, borrowed=True),
    ]
    head = job(100, "regional", gpus=8)  # a whole node, within regional's guarantee
    d = decide(snap(machine, [head], run))
    # Job 5 (the newest) was released first, but n003 stays short of 8 free GPUs; job 3 frees
    # n002, where the head will start. Only job 3 is preempted.
    assert [p.job_id for p in d.preemptions] == [3]
    assert admitted(d) == [] and "reclaiming" in d.reasons[100]
    # Once job 3 has stopped, the head starts on n002 and nothing more is preempted.
    d2 = decide(snap(machine, [head], [r for r in run if r.id != 3]))
    assert admitted(d2) == [100] and d2.admissions[0].placement.nodes == ("n002",)
    assert d2.preemptions == []


def test_nodes_a_pool_reclaims_are_given_to_no_borrower() -> None:
    """A pool reclaims two whole nodes for its gang head: one freed by a victim, one free now.
    A borrower waiting in the same cycle must not take the free one (it did: the pool reclaimed
    again next cycle: the simulator saw up to 53,660 preemptions in 10,000 Philly jobs)."""
    pools = (Pool("a", 0.5), Pool("b", 1 / 6), Pool("c", 1 / 3))  # of 48 GPUs: 24, 8, 16
    machine = h100(6)
    run = [
        running(job(1, "b", gpus=8, preemptible=True), ("n000",)),
        running(job(2, "b", gpus=8, preemptible=True), ("n001",), borrowed=True),
        running(job(3, "a", gpus=4), ("n002",)),
        running(job(4, "a", gpus=4), ("n003",)),
        running(job(5, "c", gpus=4), ("n004",)),
    ]  # n002-n004 have 4 GPUs free each, n005 all 8: one whole node free
    head = job(10, "a", gpus=8, nodes=2)  # within a's guarantee: 8 + 16 <= 24
    borrower = job(11, "b", gpus=8, preemptible=True)  # c lends its idle 12 GPUs
    d = decide(snap(machine, [head, borrower], run, pools=pools))
    assert [p.job_id for p in d.preemptions] == [2]
    assert admitted(d) == []  # n005 stays free for the head, with n001 once job 2 has stopped
    assert "reclaiming" in d.reasons[10]
    # Job 2 has stopped and waits again: the head starts on n001 and n005.
    d2 = decide(snap(machine, [head, borrower, job(2, "b", gpus=8, preemptible=True)],
                     [r for r in run if r.id != 2], pools=pools))  # fmt: skip
    assert admitted(d2)[0] == 10 and d2.preemptions == []
    assert set(d2.admissions[0].placement.nodes) == {"n001", "n005"}


def test_gpus_idle_while_their_pool_waits_for_other_nodes_are_lent_off_its_reservation() -> None:
    """Pool a wants 8 GPUs on one node; its guarantee is idle, but spread over two half-free
    nodes, so it waits for the first of them to empty (its reservation). Pool b, at its
    guarantee, may backfill a borrower onto the other node's idle GPUs meanwhile, but not onto
    the reserved node (found in the simulator: at load 0.8 on Philly, 1-GPU jobs waited days
    while 20-60 GPUs stood idle, because every pool wanted them)."""
    pools = (Pool("a", 0.5), Pool("b", 0.5))  # of 32 GPUs: 16 each
    machine = h100(4)
    run = [
        running(job(1, "b", gpus=8), ("n000",)),
        running(job(2, "b", gpus=8), ("n001",)),
        running(job(3, "a", gpus=4, limit=110), ("n002",)),  # ends by NOW + 100
        running(job(4, "a", gpus=4, limit=9000), ("n003",)),
    ]
    head = job(10, "a", gpus=8)  # within a's guarantee (8 + 8 <= 16), but no node has room
    b_head = job(11, "b", gpus=8, preemptible=True)  # beyond b's guarantee: waits for it
    small = job(12, "b", limit=60, preemptible=True)  # ends before both heads' reservations
    d = decide(snap(machine, [head, b_head, small], run, pools=pools))
    assert d.reservations[10] == NOW + 100
    assert [(a.job_id, a.placement.nodes, a.borrowed) for a in d.admissions] == [
        (12, ("n003",), True)
    ]
    # With the idle GPUs on the reserved node only, nothing is lent.
    full = [*run, running(job(5, "b", gpus=4, preemptible=True), ("n003",), borrowed=True)]
    assert admitted(decide(snap(machine, [head, b_head, small], full, pools=pools))) == []
    # Nor to a job that may not be preempted.
    fixed = replace(small, preemptible=False)
    assert admitted(decide(snap(machine, [head, b_head, fixed], run, pools=pools))) == []


def test_reclaim_never_takes_a_lender_below_its_own_guarantee() -> None:
    machine = h100(1)  # 8 GPUs: regional 2, eurohpc 4, national 1, commercial 1
    own = [running(job(i, "eurohpc", preemptible=True), ("n000",)) for i in range(4)]
    other = [running(job(10 + i, "national", preemptible=True), ("n000",)) for i in range(4)]
    # national uses 4 against a guarantee of 1: 3 borrowed, but marked so only on 3 jobs.
    other = [replace(r, borrowed=r.id != 10) for r in other]
    d = decide(snap(machine, [job(100, "regional", gpus=2)], own + other))
    assert sorted(p.job_id for p in d.preemptions) == [12, 13]
    assert all(p.job_id >= 10 for p in d.preemptions)  # eurohpc's own share is untouched


def test_fair_share_with_memory_orders_a_pool() -> None:
    machine = h100(1, gpus=1)
    heavy = job(1, project="heavy")  # older
    light = job(2, project="light")
    d = decide(snap(machine, [heavy, light], usage={"heavy": 3600.0, "light": 0.0}))
    assert admitted(d) == [2]
    # Normalised by allocation size: heavy used 10% of a big grant, light 50% of a small one.
    allocations = (
        Allocation(1, "heavy", "eurohpc", 1e6, 1000.0),
        Allocation(2, "light", "eurohpc", 1e6, 100.0),
    )
    d = decide(
        snap(
            machine,
            [replace(heavy, allocation=1), replace(light, allocation=2)],
            usage={"heavy": 100.0, "light": 50.0},
            allocations=allocations,
        )
    )
    assert admitted(d) == [1]


@pytest.mark.parametrize(
    ("jobs", "first"),
    [
        ([job(1, priority=0), job(2, priority=5)], 2),  # priority beats age
        ([job(1, at=NOW - 5), job(2, at=NOW - 50)], 2),  # then age
        ([job(7, at=NOW), job(3, at=NOW)], 3),  # then id, for a stable answer
    ],
)
def test_then_priority_then_age(jobs: list[PendingJob], first: int) -> None:
    assert admitted(decide(snap(h100(1, gpus=1), jobs))) == [first]


DAY = 86400.0


@pytest.mark.parametrize(
    ("heavy_waited", "light_waited", "after", "first"),
    [
        (6 * DAY, 1 * DAY, 7 * DAY, 2),  # neither starves: fair share orders
        (8 * DAY, 1 * DAY, 7 * DAY, 1),  # the heavy project's job has waited too long
        (8 * DAY, 9 * DAY, 7 * DAY, 2),  # both starve: the longest-waiting first
        (30 * DAY, 1 * DAY, None, 2),  # the guard turned off
    ],
)
def test_fair_share_orders_but_never_starves(
    heavy_waited: float, light_waited: float, after: float | None, first: int
) -> None:
    jobs = [job(1, project="heavy", at=NOW - heavy_waited),
            job(2, project="light", at=NOW - light_waited)]  # fmt: skip
    d = decide(snap(h100(1, gpus=1), jobs, usage={"heavy": 1e9, "light": 0.0},
                    starving_after_s=after))  # fmt: skip
    assert admitted(d) == [first]


def test_backfill_starts_short_work_that_cannot_delay_the_head() -> None:
    machine = h100(1)
    blocker = running(job(1, gpus=6, limit=100), ("n000",), started=NOW)  # ends at NOW + 100
    head = job(2, gpus=4)
    short = job(3, gpus=2, limit=50)  # ends before the head's reserved start
    long = job(4, gpus=2, limit=500)  # would still hold 2 GPUs at NOW + 100
    d = decide(snap(machine, [head, long, short], [blocker], pools=ONE_POOL))
    assert admitted(d) == [3]
    assert d.reservations == {2: NOW + 100}
    assert d.reasons[4] == "waiting behind job 2, first in pool eurohpc's queue"


def test_a_head_blocked_behind_jobs_admitted_in_the_same_cycle_keeps_its_reservation() -> None:
    """On an empty node, A starts and B (the whole node) is blocked behind it in the same
    cycle: B is reserved for when A's limit ends, so C (longer) may not pass it, D (as short)
    may. Without A in the reservation, B had none and anything that fitted passed it."""
    pending = [job(1, gpus=2, limit=5), job(2, gpus=8, limit=5), job(3, gpus=1, limit=10),
               job(4, gpus=1, limit=5)]  # fmt: skip
    d = decide(snap(h100(1), pending, pools=ONE_POOL))  # B within its pool's guarantee
    assert admitted(d) == [1, 4]
    assert d.reservations[2] == NOW + 5


def test_a_head_reserves_no_nodes_beyond_what_its_pool_could_ever_borrow() -> None:
    """Pool b's head needs two whole nodes, beyond b's guarantee (8 of 32 GPUs), and pool a
    wants its own GPUs: b could borrow nothing however much work ended. It reserves no nodes,
    so a's job may backfill onto n002, which a reservation as if b could borrow would have
    held (found in the simulator: Philly at load 1.0, mean JCT 33 -> 24 h)."""
    pools = (Pool("a", 0.75), Pool("b", 0.25))  # of 32 GPUs: 24 and 8
    run = [
        running(job(1, "b", gpus=8, limit=1010), ("n000",)),  # ends by NOW + 1000
        running(job(2, "a", gpus=4, limit=110), ("n001",)),  # NOW + 100
        running(job(3, "a", gpus=4, limit=210), ("n002",)),  # NOW + 200
        running(job(4, "a", gpus=8, limit=5010), ("n003",)),
    ]
    head = job(10, "a", gpus=8)  # within a's guarantee (16 + 8), no node has room: n001
    gang = job(20, "b", gpus=8, nodes=2, preemptible=True)
    later = job(11, "a", gpus=4, limit=3600)
    d = decide(snap(h100(4), [head, gang, later], run, pools=pools))
    assert d.reservations == {10: NOW + 100}
    assert [(a.job_id, a.placement.nodes) for a in d.admissions] == [(11, ("n002",))]

    # With nothing of a's waiting, b could borrow a's guarantee once a's work has ended: the
    # gang is reserved n001 and n002 for when they are free, while b's own job still runs
    # (asked of the machine as it is now, a job of a pool with no guarantee behind a running
    # job got no reservation at all: the live estimated start showed none).
    d = decide(snap(h100(4), [gang], run, pools=pools))
    assert d.reservations == {20: NOW + 200}


def test_backfill_may_use_nodes_the_head_does_not_need() -> None:
    machine = h100(2)
    busy = running(job(1, gpus=8, limit=100), ("n000",), started=NOW)
    half = running(job(2, gpus=4, limit=1000), ("n001",), started=NOW)
    head = job(3, gpus=8)  # reserved: n000 at NOW + 100
    long = job(4, gpus=4, limit=5000)  # fits on n001, not reserved
    d = decide(snap(machine, [head, long], [busy, half], pools=ONE_POOL))
    assert admitted(d) == [4] and d.admissions[0].placement.nodes == ("n001",)
    assert d.reservations == {3: NOW + 100}


def full(
    machine: Partition, rng: random.Random, make: Callable[[int, int], PendingJob]
) -> list[RunningJob]:
    """Every node filled with running jobs of random sizes, `make(id, gpus)` each, started in the
    last minute; preemptible ones marked borrowed."""
    run, k = [], 0
    for node in machine.nodes:
        used = 0
        while used < 8:
            g = rng.randint(1, 8 - used)
            k += 1
            pending = make(k, g)
            run.append(running(pending, (node.name,), started=NOW - rng.randint(0, 50),
                               borrowed=pending.preemptible))  # fmt: skip
            used += g
    return run


@pytest.mark.parametrize("seed", range(30))
def test_backfill_never_delays_the_head(seed: int) -> None:
    """Random machines and queues: the head's reserved start with the backfilled jobs running
    is never later than without them."""
    rng = random.Random(seed)
    machine = h100(rng.randint(1, 4))
    run = full(machine, rng, lambda k, g: job(k, gpus=g, limit=rng.choice([60, 300, 900])))
    pending = [
        job(100 + i, gpus=rng.randint(1, 8), nodes=1, limit=rng.choice([30, 120, 600, 3600]))
        for i in range(12)
    ]
    # Free a little so that some work fits now.
    run = run[rng.randint(1, max(1, len(run) // 2)) :]
    d = decide(snap(machine, pending, run, pools=ONE_POOL))
    for head_id, reserved in d.reservations.items():
        now_running = run + [
            running(next(p for p in pending if p.id == a.job_id), a.placement.nodes, started=NOW)
            for a in d.admissions
        ]
        head = next(p for p in pending if p.id == head_id)
        again = decide(snap(machine, [head], now_running, pools=ONE_POOL))
        assert again.reservations.get(head_id, NOW) <= reserved, (seed, head_id)


def test_gang_jobs_start_whole_or_not_at_all() -> None:
    machine = h100(3)
    half = running(job(1, gpus=4, limit=100), ("n001",), started=NOW)
    full = running(job(2, gpus=8, limit=100), ("n002",), started=NOW)
    two_nodes = job(3, gpus=8, nodes=2)  # needs two empty nodes; only n000 is
    d = decide(snap(machine, [two_nodes], [half, full], pools=ONE_POOL))
    assert admitted(d) == []
    assert d.reasons[3].startswith("waiting for 16 h100 GPUs on 2 nodes")
    d = decide(snap(machine, [two_nodes], [half], pools=ONE_POOL))
    assert admitted(d) == [3]
    assert d.admissions[0].placement.nodes == ("n000", "n002")


def test_allocation_holds_cannot_be_overdrawn() -> None:
    machine = h100(1)
    grant = (Allocation(1, "p", "eurohpc", remaining_gpu_hours=10.0, size_gpu_hours=10.0),)
    first = running(job(1, allocation=1, limit=4 * 3600), ("n000",))  # holds 4 GPU-hours
    pending = [job(2, allocation=1, limit=4 * 3600), job(3, allocation=1, limit=4 * 3600)]
    d = decide(snap(machine, pending, [first], allocations=grant, pools=ONE_POOL))
    assert admitted(d) == [2]
    assert "allocation 1 cannot cover it (2.0 GPU-hours left" in d.reasons[3]
    unknown = decide(snap(machine, [job(4, allocation=99)]))
    assert admitted(unknown) == [] and "allocation 99" in unknown.reasons[4]


def test_a_job_that_can_never_run_does_not_block_its_pool() -> None:
    d = decide(snap(h100(1), [job(1, gpus=16), job(2, gpus=2)]))
    assert admitted(d) == [2]
    assert "can never start" in d.reasons[1]


def test_a_job_beyond_its_pools_whole_guarantee_that_cannot_be_preempted_is_set_aside() -> None:
    """Pool eurohpc is owed 4 of 8 GPUs. A job of 8 that cannot be preempted could never borrow
    the rest: it is set aside with its reason instead of heading the queue for ever (the job
    behind it once waited for backfill only). The same job, preemptible, may borrow: it starts."""
    d = decide(snap(h100(1), [job(1, gpus=8), job(2, gpus=2)]))
    assert admitted(d) == [2]
    assert d.reasons[1] == (
        "waiting: it needs 8 GPUs, more than pool eurohpc's whole guarantee (4), and only "
        "preemptible jobs may borrow beyond it; it can never start as it is"
    )
    assert 1 not in d.heads.values()
    d = decide(snap(h100(1), [job(1, gpus=8, preemptible=True), job(2, gpus=2)]))
    assert admitted(d) == [1]


def test_each_step_is_named_and_timed() -> None:
    d = decide(snap(h100(1), [job(1)]))
    assert list(d.timings) == [
        "snapshot",
        "nominate",
        "order",
        "admit",
        "preempt",
        "borrow",
        "backfill",
        "explain",
    ]
    assert all(t >= 0 for t in d.timings.values())


def test_cpu_only_jobs_need_no_pool_share() -> None:
    cpu = PendingJob(1, "p", "commercial", None, Request(0, 4, G, 1, None, 60), NOW)
    d = decide(snap(h100(1), [cpu]))
    assert admitted(d) == [1]


def test_a_guarantee_is_counted_on_the_gpu_type_a_job_lands_on() -> None:
    """Untyped jobs of pool P may not take pool Q's guarantee on a second GPU type."""

    def part(name: str, gpu_type: str) -> Partition:
        return Partition(
            name, gpu_type, tuple(Node(f"{name}{i}", 2, 32, 256 * G) for i in range(2))
        )

    parts = (part("h", "h100"), part("a", "a100"))
    pools = (Pool("P", 0.5), Pool("Q", 0.5))
    q_own = RunningJob(1, "q", "Q", None, Request(2, 1, 0, 1, "h100"), Placement("h", ("h0",)), 0.0)
    q_lent = RunningJob(
        2, "q", "Q", None, Request(2, 1, 0, 1, "h100"), Placement("h", ("h1",)), 0.0,
        preemptible=True, borrowed=True,
    )  # fmt: skip
    pending = (
        PendingJob(10, "p", "P", None, Request(2, 1, 0, 1, None), 1.0),
        PendingJob(11, "p", "P", None, Request(2, 1, 0, 1, None), 2.0),
    )
    d = decide(Snapshot(10.0, parts, pools, running=(q_own, q_lent), pending=pending))
    assert [(a.job_id, a.placement.partition, a.borrowed) for a in d.admissions] == [
        (10, "a", False)
    ]  # P's a100 guarantee is 2 GPUs: the second job may not take Q's
    assert 11 in d.reasons


def test_backfill_leaves_the_guarantee_a_blocked_head_will_need() -> None:
    machine = Partition("h", "h100", tuple(Node(f"n{i}", 2, 32, 256 * G) for i in range(6)))
    pools = (Pool("P", 0.34), Pool("Q", 0.66))  # P is owed 4 of 12 GPUs
    running = (
        RunningJob(
            1, "p", "P", None, Request(2, 1, 0, 1, "h100", 100.0), Placement("h", ("n0",)), 0.0
        ),
        RunningJob(
            2, "q", "Q", None, Request(2, 1, 0, 1, "h100", 1e4), Placement("h", ("n1",)), 0.0
        ),
    )
    head = PendingJob(10, "p", "P", None, Request(2, 1, 0, 2, "h100", 3600.0), 1.0)  # 4 GPUs
    long = PendingJob(11, "p", "P", None, Request(2, 1, 0, 1, "h100", 1000.0), 2.0)
    d = decide(Snapshot(10.0, (machine,), pools, running=running, pending=(head, long)))
    # At t=100 job 1 ends and P may use its 4 GPUs for the head; job 11 would still hold 2.
    assert d.reservations == {10: 100.0}
    assert d.admissions == []


# --- green scheduling -----------------------------------------------------------------------------
HOUR_START = NOW - NOW % 3600  # the forecast begins at the hour NOW falls in
# Dirty now, clean two hours on, dirty again after.
FORECAST = (400.0, 380.0, 120.0, 110.0, 390.0, 400.0, 410.0, 420.0)


def flexible(job_id: int, *, slack_h: float, limit: float = 3600, **kw: object) -> PendingJob:
    return replace(job(job_id, limit=limit, **kw), deadline=NOW + slack_h * 3600 + limit)  # type: ignore[arg-type]


def green(
    pending: tuple[PendingJob, ...], *, forecast: tuple[float | None, ...] = FORECAST
) -> Decisions:
    return decide(
        Snapshot(
            NOW, (h100(1),), POOLS, pending=pending, forecast=forecast, forecast_start=HOUR_START
        )
    )


def test_a_flexible_job_waits_for_the_greenest_hours_within_its_deadline() -> None:
    decisions = green((flexible(1, slack_h=6), job(2)))
    assert [a.job_id for a in decisions.admissions] == [2]  # the other job is not held up
    window = decisions.deferrals[1]
    assert window.start == HOUR_START + 3 * 3600 and window.intensity == pytest.approx(110)
    assert decisions.reasons[1].startswith("waiting for a greener hour: forecast 110 g/kWh at ")
    assert " vs " in decisions.reasons[1] and "; deadline " in decisions.reasons[1]


def test_a_flexible_job_keeps_half_its_length_in_hand_before_its_latest_start() -> None:
    """Found in the simulator: jobs held to a window 30 minutes before their latest start found
    the machine busy and missed their deadlines. A 4-hour job whose deadline allows a start up
    to 5 hours from now plans to start by 3 hours from now: not in hour 4, the greenest, but in
    hour 3."""
    clean_after_4h = (400.0,) * 4 + (100.0,) * 8
    decisions = green((flexible(1, slack_h=5, limit=4 * 3600),), forecast=clean_after_4h)
    window = decisions.deferrals[1]
    assert window.start == HOUR_START + 3 * 3600  # NOW + 2.6 h; hour 4 is NOW + 3.6 h
    assert window.intensity == pytest.approx((400 + 3 * 100) / 4)


@pytest.mark.parametrize(
    ("case", "pending", "forecast"),
    [
        ("no slack to wait", flexible(1, slack_h=0), FORECAST),
        ("greener hours lie beyond its deadline", flexible(1, slack_h=1), FORECAST),
        ("no forecast", flexible(1, slack_h=6), ()),
        (
            "its chosen hour has come",
            replace(flexible(1, slack_h=6), green_start=NOW - 60),
            FORECAST,
        ),
        ("a job without a deadline", job(1), FORECAST),
    ],
)
def test_when_a_flexible_job_is_not_held_back(
    case: str, pending: PendingJob, forecast: tuple[float | None, ...]
) -> None:
    decisions = green((pending,), forecast=forecast)
    assert [a.job_id for a in decisions.admissions] == [1], case
    assert not decisions.deferrals


def test_a_flexible_job_at_its_latest_start_goes_first_in_its_pool() -> None:
    # One GPU free: the urgent flexible job (submitted last) takes it before older work.
    full = h100(1, gpus=1)
    urgent = replace(flexible(3, slack_h=0), submitted_at=NOW)
    decisions = decide(
        Snapshot(
            NOW,
            (full,),
            POOLS,
            pending=(job(1), job(2), urgent),
            forecast=FORECAST,
            forecast_start=HOUR_START,
        )
    )
    assert [a.job_id for a in decisions.admissions] == [3]


def test_flexible_work_spreads_over_green_hours_that_have_room() -> None:
    # One node of 2 GPUs: the greenest hour (3) holds two jobs; the third goes to hour 2.
    node = Partition("gpu", "h100", (Node("n000", 2, 64, 512 * G),))
    pending = tuple(flexible(i, slack_h=6) for i in (1, 2, 3))
    decisions = decide(
        Snapshot(NOW, (node,), POOLS, pending=pending, forecast=FORECAST, forecast_start=HOUR_START)
    )
    starts = sorted(w.start for w in decisions.deferrals.values())
    assert starts == [HOUR_START + 2 * 3600, HOUR_START + 3 * 3600, HOUR_START + 3 * 3600]
    assert not decisions.admissions


def test_work_that_cannot_wait_is_served_first_and_flexible_work_plans_around_it() -> None:
    # Two GPUs, the next hour (opening in 800 s) is clean. Two rigid jobs start now, one for two
    # hours; the flexible jobs get what is left: one GPU in the clean hour, the other later.
    node = Partition("gpu", "h100", (Node("n000", 2, 64, 512 * G),))
    clean_next = (400.0, 100.0, 400.0, 400.0, 400.0, 400.0)
    pending = (
        flexible(1, slack_h=3),
        flexible(2, slack_h=3),
        replace(job(3, limit=7200), submitted_at=NOW),
        replace(job(4, limit=600), submitted_at=NOW),
    )
    alone = (Pool("eurohpc", 1.0),)
    decisions = decide(
        Snapshot(
            NOW, (node,), alone, pending=pending, forecast=clean_next, forecast_start=HOUR_START
        )
    )
    assert [a.job_id for a in decisions.admissions] == [3, 4]
    assert decisions.deferrals[1].start == HOUR_START + 3600
    assert decisions.deferrals[2].start == HOUR_START + 7200  # after job 3's two hours
    assert decisions.reasons[2].startswith("waiting: the free GPUs are planned for jobs held")


def test_a_flexible_job_without_room_before_its_deadline_goes_first() -> None:
    # The only GPU is busy for 50 minutes; the flexible job (latest start in 55 minutes) is not
    # held back to a later "as soon as there is room" but queued first.
    node = Partition("gpu", "h100", (Node("n000", 1, 64, 512 * G),))
    busy = running(job(9, limit=3000), ("n000",), started=NOW)
    pending = (job(1), replace(flexible(2, slack_h=55 / 60), submitted_at=NOW))
    decisions = decide(
        Snapshot(
            NOW, (node,), POOLS, running=(busy,), pending=pending, forecast=FORECAST,
            forecast_start=HOUR_START,
        )
    )  # fmt: skip
    assert not decisions.deferrals
    assert decisions.reservations.get(2) is not None  # first in its queue: the reserved head


def test_a_job_longer_than_the_forecast_still_counts_in_the_green_plan() -> None:
    # 8 GPUs; a 9-day job without a deadline waits behind a flexible one. The long job takes the
    # machine as soon as it starts, so holding the flexible one back would break its deadline.
    alone = (Pool("eurohpc", 1.0),)
    pending = (
        flexible(1, slack_h=6, gpus=8),
        replace(job(2, gpus=8, limit=9 * 86400), submitted_at=NOW),
    )
    decisions = decide(
        Snapshot(
            NOW,
            (h100(1),),
            alone,
            pending=pending,
            forecast=FORECAST * 24,
            forecast_start=HOUR_START,
        )
    )
    assert 1 not in decisions.deferrals
    assert [a.job_id for a in decisions.admissions] == [1]


def test_a_job_that_cannot_start_takes_no_room_in_the_green_plan() -> None:
    # Job 2's allocation cannot cover it: it must not keep the free GPUs from the flexible job,
    # which waits for the clean hour instead (or starts now), never "for planned jobs".
    alone = (Pool("eurohpc", 1.0),)
    broke = Allocation(7, "p", "eurohpc", remaining_gpu_hours=0.5, size_gpu_hours=100)
    pending = (
        flexible(1, slack_h=6, gpus=8),
        replace(job(2, gpus=8, limit=7200, allocation=7), submitted_at=NOW),
    )
    decisions = decide(
        Snapshot(
            NOW, (h100(1),), alone, (broke,), pending=pending, forecast=FORECAST,
            forecast_start=HOUR_START,
        )
    )  # fmt: skip
    assert decisions.deferrals[1].start == HOUR_START + 3 * 3600
    assert decisions.reasons[1].startswith("waiting for a greener hour")
    assert decisions.reasons[2].startswith("waiting: allocation 7 cannot cover it")


def test_without_explain_the_same_decisions_and_no_reasons_for_those_left_waiting() -> None:
    # The simulator asks for decisions only (Snapshot.explain=False): what is admitted,
    # reserved and preempted must not depend on it.
    pending = [job(i, pool, gpus=1 + i % 8, preemptible=i % 3 == 0, limit=600 * (1 + i % 5))
               for i, pool in enumerate(["eurohpc", "regional", "national", "commercial"] * 15)]  # fmt: skip
    lent = job(900, "commercial", gpus=8, preemptible=True)
    base = snap(h100(6), pending, [running(lent, ("n000",), borrowed=True)])
    told, silent = decide(base), decide(replace(base, explain=False))
    assert told.admissions and told.reasons and told.heads
    assert silent.admissions == told.admissions
    assert silent.preemptions == told.preemptions
    assert silent.reservations == told.reservations
    # Only the jobs set aside before the queues keep their reasons (they are not decisions the
    # replay could miss: such jobs never start); none of those left in a queue get one.
    assert silent.heads == {} and 0 < len(silent.reasons) < len(told.reasons)
    assert silent.reasons.items() <= told.reasons.items()
    assert all("can never start" in why for why in silent.reasons.values())


def test_where_a_job_lands_depends_on_what_is_free_not_on_how_it_came_to_be() -> None:
    # Reservations take running jobs off the nodes and put them back, in the order they end;
    # the node a job is then given must be the one it would have got before (found when one
    # pass came to serve every head's reservation: with nodes kept in the order they last
    # moved, every such pass changed where later jobs landed).
    from fabriek.scheduling.engine import _Nodes

    machine = h100(6)
    held = {"n000": [3, 3, 0], "n002": [5, 5, 0], "n004": [3, 3, 0]}
    fresh, moved = _Nodes(machine, held), _Nodes(machine, held)
    for node, gpus in [("n001", 2), ("n000", 1), ("n003", 8), ("n001", 5)]:
        moved.take(node, gpus, gpus, 0)  # a job released or placed, then put back
        moved.take(node, -gpus, -gpus, 0)
    assert moved.buckets == fresh.buckets
    for gpus, nodes in [(1, 1), (3, 1), (5, 1), (8, 1), (8, 2), (4, 3)]:
        request = Request(gpus_per_node=gpus, cpus_per_node=1, nodes=nodes)
        assert moved.find(request, frozenset()) == fresh.find(request, frozenset())
    # Among nodes with as much free, the first in the partition's order: n000 and n004 both
    # have 5 free; the fullest node that fits a 5-GPU job is n000.
    assert fresh.find(Request(gpus_per_node=5, cpus_per_node=1), frozenset()) == ("n000",)
    assert fresh.find(Request(gpus_per_node=2, cpus_per_node=1), frozenset()) == ("n002",)


@pytest.mark.parametrize("seed", range(60))
def test_one_pass_reserves_for_every_head_as_each_alone_would(seed: int) -> None:
    # `_reserve` looks for every blocked head's start in one pass over the running jobs; each
    # head must get the start and nodes it gets looked for alone, and the nodes must be left
    # as they were. Machines of one to three partitions (H100, A100 and CPU-only nodes of
    # different sizes), so that heads of other GPU types, CPU-only heads and heads that fit by
    # GPUs but not by CPUs or memory are among them.
    from fabriek.scheduling import engine as E

    rng = random.Random(seed)
    kinds = [("a", "h100"), ("b", "a100"), ("c", "")][: rng.randint(1, 3)]
    partitions = tuple(
        Partition(name, gpu_type, tuple(
            Node(f"{name}{i}", rng.choice([4, 8]) if gpu_type else 0, rng.choice([8, 16]),
                 rng.choice([64, 128]) * G)
            for i in range(rng.randint(1, 4))))
        for name, gpu_type in kinds
    )  # fmt: skip
    pools = ["eurohpc", "regional", "national", "commercial"]
    run: list[RunningJob] = []
    for partition in partitions:
        for node in partition.nodes:
            gpus = cpus = 0
            while gpus < node.gpus or (not node.gpus and cpus < node.cpus):
                g = rng.randint(1, node.gpus - gpus) if node.gpus else 0
                c = rng.randint(1, 4)
                if cpus + c > node.cpus:
                    break
                request = Request(g, c, rng.choice([0, 16 * G]), 1, partition.gpu_type or None,
                                  rng.choice([60, 300, 900, 3600]),
                                  rng.choice([None, partition.name]))  # fmt: skip
                lent = rng.random() < 0.3
                run.append(RunningJob(len(run) + 1, "p", rng.choice(pools), None, request,
                                      Placement(partition.name, (node.name,)),
                                      NOW - rng.randint(0, 50), lent, lent))  # fmt: skip
                gpus, cpus = gpus + g, cpus + c
    run = run[rng.randint(0, len(run) // 3) :]
    waiting = []
    for i in range(16):
        partition = rng.choice(partitions)
        g = rng.choice([1, 2, 4, 8]) if partition.gpu_type and rng.random() > 0.2 else 0
        request = Request(g, rng.choice([1, 4, 8, 16]), rng.choice([0, 32 * G, 100 * G]),
                          rng.choice([1, 1, 2]), rng.choice([None, partition.gpu_type or None]),
                          rng.choice([120, 600, 3600]))  # fmt: skip
        waiting.append(PendingJob(100 + i, "p", rng.choice(pools), None, request, NOW - 100 + i,
                                  preemptible=rng.random() < 0.5))  # fmt: skip
    snapshot = Snapshot(NOW, partitions, POOLS, running=tuple(run), pending=tuple(waiting))

    def blocked_heads() -> tuple[E._State, dict[str, E._Blocked]]:
        decisions = Decisions()
        state = E._State(snapshot)
        queues = E._nominate(state, snapshot.pending, decisions)
        E._order(state, queues)
        blocked = E._admit_within_guarantees(state, queues, decisions)
        E._reclaim(state, queues, blocked, decisions)
        E._borrow(state, queues, blocked, decisions)
        return state, blocked

    def nodes(state: E._State) -> dict[str, object]:
        return {name: ([list(b) for b in n.buckets],
                       {node: (f.gpus, f.cpus, f.memory) for node, f in n.free.items()})
                for name, n in state.nodes.items()}  # fmt: skip

    state, blocked = blocked_heads()
    before = nodes(state)
    E._reserve(state, blocked)
    assert nodes(state) == before
    for pool, head in blocked.items():
        alone_state, alone = blocked_heads()
        E._reserve(alone_state, {pool: alone[pool]})
        mine = alone[pool]
        assert (mine.reserved_at, mine.reserved_nodes, mine.pool_used_at) == (
            head.reserved_at, head.reserved_nodes, head.pool_used_at), (seed, pool)  # fmt: skip


def test_pending_already_in_order_decides_the_same_without_sorting_it() -> None:
    # The simulator promises its queue is by priority, submission and id
    # (Snapshot.pending_in_order): the engine must then decide exactly as if it had sorted it.
    rng = random.Random(3)
    pending = sorted(
        (job(i, rng.choice(["eurohpc", "regional", "national", "commercial"]),
             gpus=rng.choice([1, 2, 4, 8]), project=f"p{i % 5}", priority=rng.choice([0, 0, 5]),
             at=NOW - rng.randint(0, 5000), limit=rng.choice([600, 3600]),
             preemptible=i % 2 == 0)
         for i in range(60)),
        key=lambda j: (-j.priority, j.submitted_at, j.id),
    )  # fmt: skip
    usage = {f"p{k}": 1000.0 * k for k in range(5)}
    base = snap(h100(4), pending, usage=usage)
    sorted_here = decide(base)
    trusted = decide(replace(base, pending_in_order=True))
    assert sorted_here.admissions and sorted_here.reservations
    assert trusted.admissions == sorted_here.admissions
    assert trusted.reservations == sorted_here.reservations
    assert trusted.reasons == sorted_here.reasons
    shuffled = replace(base, pending=tuple(reversed(pending)))  # without the promise: sorted
    assert decide(shuffled).admissions == sorted_here.admissions


def test_in_order_the_starving_still_go_first() -> None:
    # With the promise and alike priorities the oldest job is found at the queue's head.
    old = job(1, project="heavy", at=NOW - 15 * 86400, gpus=8)
    pending = [old, *(job(i, project="light", gpus=8) for i in range(2, 6))]
    usage = {"heavy": 1e9, "light": 0.0}
    for in_order in (False, True):
        d = decide(snap(h100(1), pending, pools=ONE_POOL, usage=usage, pending_in_order=in_order))
        assert admitted(d) == [1]


def test_running_work_on_a_partition_or_node_since_removed_frees_nothing_there() -> None:
    # The controller builds running jobs from the database: one may still run on a partition or
    # node no longer configured. Reservations pass over it instead of failing the cycle.
    machine = h100(1)
    # Both end before the blocker, so the reservation's pass meets them first.
    gone = RunningJob(90, "p", "eurohpc", None,
                      Request(gpus_per_node=8, cpus_per_node=1, time_limit_s=30),
                      Placement("gone", ("x1",)), NOW - 10, False)  # fmt: skip
    moved = RunningJob(91, "p", "eurohpc", None,
                       Request(gpus_per_node=4, cpus_per_node=1, time_limit_s=60),
                       Placement("gpu", ("n999",)), NOW - 10, False)  # fmt: skip
    blocker = running(job(1, gpus=8, limit=600), ("n000",))
    d = decide(snap(machine, [job(2, gpus=8)], [blocker, gone, moved], pools=ONE_POOL))
    assert admitted(d) == []
    assert d.reservations == {2: blocker.ends_by}
