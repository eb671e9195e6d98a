"""A project's POSIX identity and a job's network: what the kernel keeps tenants apart by.

Each project is a uid and a gid of its own (the same number), allocated by fabriek from the
operator's range (FABRIEK_UID_RANGE) when the project is made and never given to another. Every
process of the project's jobs runs as it, on this machine and on Slurm's nodes
(docs/security.md, "Tenant isolation").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from fabriek.core.errors import InvalidRequest, NetworkNotAllowed

# Below 65536 lie the ids distributions and sites hand out themselves; 2^31-1 is where
# 32-bit signed uids (and some tools) end.
UID_FLOOR = 65536
UID_CEILING = 2**31 - 2
DEFAULT_UID_RANGE = "200000-299999"
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


@dataclass(frozen=True, slots=True)
class UidRange:
    first: int
    last: int

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.first <= uid <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def parse_uid_range(text: str) -> UidRange:
    """`FIRST-LAST`, both within [65536, 2^31-2]; raises InvalidRequest saying what is wrong."""
    match = _RANGE.fullmatch(text)
    if not match:
        raise InvalidRequest(
            f"uid range {text!r}: write it as FIRST-LAST, e.g. {DEFAULT_UID_RANGE}"
        )
    first, last = int(match[1]), int(match[2])
    if not UID_FLOOR <= first <= last <= UID_CEILING:
        raise InvalidRequest(
            f"uid range {text!r}: FIRST <= LAST, both from {UID_FLOOR} to {UID_CEILING} "
            "(ids below are the system's and the site's own)"
        )
    return UidRange(first, last)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a job runs as: its project's uid and gid, and the project's name (Slurm's account)."""

    uid: int
    gid: int
    project: str

    @property
    def user_name(self) -> str:
        """The POSIX user (and group) name of the uid on Slurm's nodes: `fp<uid>` (project
        names may be longer than the 32 characters a user name may hold)."""
        return f"fp{self.uid}"


class Network(StrEnum):
    """What a job may reach. Ordered from least to most: an operator's lock allows what is at
    or below it."""

    NONE = "none"  # its own network namespace with no interface up: nothing, not even itself
    LOOPBACK = "loopback"  # its own network namespace with its own loopback only
    HOST = "host"  # the machine's network, as any process of the machine

    @property
    def rank(self) -> int:
        return list(Network).index(self)

    def allows(self, wanted: Network) -> bool:
        return wanted.rank <= self.rank

    @classmethod
    def parse(cls, text: str, what: str = "network") -> Network:
        """`none`, `loopback` or `host`; raises InvalidRequest naming `what` and the choices."""
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(n.value for n in cls)
            raise InvalidRequest(f"{what} is one of {choices}, not {text!r}") from None


def spelled(networks: frozenset[Network]) -> str:
    """`host`; `none or loopback`; `nothing`: least first."""
    names = [n.value for n in Network if n in networks]
    return " or ".join(names) if names else "nothing"


def least(first: Network, *others: Network) -> Network:
    """The one that allows the least."""
    return min((first, *others), key=lambda n: n.rank)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A partition's network, as the operator set it in the partitions file: what its jobs get
    when they ask for none (`default`), and the most they may ask for (`limit`); and the least
    its backend can hold a job to (`least`; `host` where it cannot confine a job's network at
    all, as on Slurm's nodes today)."""

    default: Network = Network.HOST
    limit: Network = Network.HOST
    least: Network = Network.NONE

    @property
    def offers(self) -> frozenset[Network]:
        """The networks a job may have here: from `least` to `limit`."""
        return frozenset(n for n in Network if self.least.rank <= n.rank <= self.limit.rank)


def job_network(
    asked: Network | None,
    *,
    partition: str,
    policy: NetworkPolicy,
    project: str,
    lock: Network | None,
) -> Network:
    """The network a job gets on `partition`: what it asked for, else the partition's default
    lowered to what the project's `lock` (an operator's; None: none) and the partition allow.
    Raises NetworkNotAllowed where it asked for more than the project's lock or the partition's
    limit, or for less than the partition can hold it to (then a job that asked for nothing, in
    a project locked below that, too)."""
    if asked is None:
        got = least(policy.default, policy.limit, *(() if lock is None else (lock,)))
        if got.rank < policy.least.rank:
            raise NetworkNotAllowed(
                f"project {project!r} is locked to network {got.value} by an operator, and "
                f"partition {partition} cannot hold a job to less than {policy.least.value}: "
                "run it on another partition",
                project=project,
                partition=partition,
            )
        return got
    if lock is not None and not lock.allows(asked):
        raise NetworkNotAllowed(
            f"project {project!r} is locked to network {lock.value} by an operator, and the "
            f"job asks for {asked.value}: ask for {lock.value} (--network {lock.value}) or less",
            project=project,
            network=asked.value,
            lock=lock.value,
        )
    if not policy.limit.allows(asked):
        raise NetworkNotAllowed(
            f"partition {partition} allows network {policy.limit.value} at most, and the job "
            f"asks for {asked.value}: ask for {policy.limit.value} or less, or another partition",
            partition=partition,
            network=asked.value,
            limit=policy.limit.value,
        )
    if asked.rank < policy.least.rank:
        raise NetworkNotAllowed(
            f"partition {partition} cannot hold a job to less network than {policy.least.value} "
            f"(its backend does not confine a job's network), and the job asks for "
            f"{asked.value}: ask for {policy.least.value}, or another partition",
            partition=partition,
            network=asked.value,
        )
    return asked
