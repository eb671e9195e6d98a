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

from fabriek.core.errors import InvalidRequest

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
