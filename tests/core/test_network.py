"""A job's network: what it asked for, its partition's default and limit, its project's lock."""

from __future__ import annotations

import pytest

from fabriek.core.errors import InvalidRequest, NetworkNotAllowed
from fabriek.core.identity import Network, NetworkPolicy, job_network, least

NONE, LOOPBACK, HOST = Network.NONE, Network.LOOPBACK, Network.HOST


def test_the_modes_are_ordered_least_first() -> None:
    assert [n.value for n in Network] == ["none", "loopback", "host"]
    assert HOST.allows(LOOPBACK) and LOOPBACK.allows(NONE) and NONE.allows(NONE)
    assert not NONE.allows(LOOPBACK) and not LOOPBACK.allows(HOST)
    assert least(HOST, NONE, LOOPBACK) == NONE


def test_parse_names_the_choices() -> None:
    assert Network.parse("loopback") == LOOPBACK
    with pytest.raises(InvalidRequest, match="network is one of none, loopback, host, not 'web'"):
        Network.parse("web")


def test_what_a_partition_offers() -> None:
    assert NetworkPolicy(NONE, LOOPBACK).offers == {NONE, LOOPBACK}
    assert NetworkPolicy(HOST, HOST, HOST).offers == {HOST}


@pytest.mark.parametrize(
    ("asked", "default", "limit", "lock", "gets"),
    [
        (None, HOST, HOST, None, HOST),  # the embedded demo: as before
        (None, NONE, HOST, None, NONE),  # the partition's default
        (None, HOST, HOST, NONE, NONE),  # lowered to the project's lock, not refused
        (None, HOST, LOOPBACK, None, LOOPBACK),  # and to the partition's limit
        (NONE, HOST, HOST, None, NONE),  # asked for less than the default
        (HOST, NONE, HOST, None, HOST),  # more than the default, within the limit
        (LOOPBACK, NONE, LOOPBACK, LOOPBACK, LOOPBACK),  # exactly at both
    ],
)
def test_what_a_job_gets(
    asked: Network | None, default: Network, limit: Network, lock: Network | None, gets: Network
) -> None:
    policy = NetworkPolicy(default, limit)
    assert job_network(asked, partition="p", policy=policy, project="x", lock=lock) == gets


@pytest.mark.parametrize(
    ("asked", "limit", "lock", "message"),
    [
        (
            HOST,
            HOST,
            NONE,
            "project 'vision' is locked to network none by an operator, and the job asks for "
            "host: ask for none (--network none) or less",
        ),
        (LOOPBACK, HOST, NONE, "locked to network none"),
        (
            HOST,
            LOOPBACK,
            None,
            "partition gpu allows network loopback at most, and the job asks for host",
        ),
        (LOOPBACK, NONE, HOST, "partition gpu allows network none at most"),
    ],
)
def test_asking_for_more_than_allowed_is_refused(
    asked: Network, limit: Network, lock: Network | None, message: str
) -> None:
    with pytest.raises(NetworkNotAllowed) as refused:
        job_network(
            asked, partition="gpu", policy=NetworkPolicy(NONE, limit), project="vision", lock=lock
        )
    assert message in refused.value.message
    assert (refused.value.code, refused.value.http_status) == ("network_not_allowed", 403)


def test_less_than_a_partition_can_hold_a_job_to_is_refused() -> None:
    """A Slurm partition today: every job there has the node's network."""
    slurm = NetworkPolicy(HOST, HOST, HOST)
    assert job_network(None, partition="gpu", policy=slurm, project="x", lock=None) == HOST
    with pytest.raises(NetworkNotAllowed) as refused:
        job_network(NONE, partition="gpu", policy=slurm, project="x", lock=None)
    assert refused.value.message == (
        "partition gpu cannot hold a job to less network than host (its backend does not "
        "confine a job's network), and the job asks for none: ask for host, or another partition"
    )
    with pytest.raises(NetworkNotAllowed) as locked:  # asked for nothing, but locked below
        job_network(None, partition="gpu", policy=slurm, project="x", lock=LOOPBACK)
    assert locked.value.message == (
        "project 'x' is locked to network loopback by an operator, and partition gpu cannot "
        "hold a job to less than host: run it on another partition"
    )
