"""Tenants: organisations, their members and projects, users and their platform roles.

Pure rules and value objects; the services apply them to the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fabriek.core.errors import InvalidRequest
from fabriek.core.identity import Network
from fabriek.core.text import check_label


class OrgKind(StrEnum):
    SME = "sme"
    LARGE_COMPANY = "large_company"
    UNIVERSITY = "university"
    RESEARCH_INSTITUTE = "research_institute"
    GOVERNMENT = "government"
    HEALTH = "health"
    OTHER = "other"


class OrgRole(StrEnum):
    """Owners manage everything of their organisation, managers its projects and plain members,
    members work in the projects they are added to."""

    OWNER = "owner"
    MANAGER = "manager"
    MEMBER = "member"


class ProjectRole(StrEnum):
    """Project managers add and remove the project's members."""

    MANAGER = "manager"
    MEMBER = "member"


# Handles used in URLs and on the command line.
ORG_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_COUNTRY = re.compile(r"[A-Z]{2}")
# A NUTS code: the country's two letters, then one to three characters for levels 1-3 (NL1, NL11,
# NL113). Greece is EL in NUTS, not GR.
_NUTS = re.compile(r"[A-Z]{2}[0-9A-Z]{1,3}")
_NUTS_COUNTRY = {"GR": "EL"}

# The Northern Netherlands: Groningen, Friesland, Drenthe.
NORTHERN_NETHERLANDS = ("NL11", "NL12", "NL13")


def check_org_name(name: str) -> str:
    if not ORG_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid organisation name {name!r}: 2-64 characters, lower-case letters, digits and "
            "'-', starting with a letter or digit (e.g. 'rug' or 'umcg'); the full name goes in "
            "display_name"
        )
    return name


# The pool of jobs without an allocation (the engine's and the reports'): no operator's pool has it.
UNALLOCATED = "unallocated"
RESERVED_POOL_NAMES = frozenset({UNALLOCATED})


def check_pool_name(name: str) -> str:
    if name in RESERVED_POOL_NAMES:
        raise InvalidRequest(
            f"the pool name {name!r} is reserved: jobs without an allocation wait in it"
        )
    if not ORG_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid pool name {name!r}: 2-64 characters, lower-case letters, digits and '-' "
            "(e.g. 'regional')"
        )
    return name


def check_project_name(name: str) -> str:
    if not PROJECT_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid project name {name!r}: 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    return name


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid user name {name!r}: 1-128 letters, digits, '.', '_', '@' or '-', starting "
            "with a letter or digit"
        )
    return name


def check_display_name(name: str) -> str:
    """Trimmed, then the rule for every name people read (core.text.check_label)."""
    return check_label(name.strip(" "), what="display name", max_len=256)


def check_location(country: str | None, region: str | None) -> tuple[str | None, str | None]:
    """Validate an ISO 3166-1 country and a NUTS region code within it (upper-cased)."""
    country = country.upper() if country else None
    region = region.upper() if region else None
    if country is not None and not _COUNTRY.fullmatch(country):
        raise InvalidRequest(f"invalid country {country!r}: two letters, ISO 3166-1 (e.g. NL)")
    if region is not None:
        if not _NUTS.fullmatch(region):
            raise InvalidRequest(
                f"invalid region {region!r}: a NUTS code such as NL11 (Groningen), NL12 "
                "(Friesland) or NL13 (Drenthe)"
            )
        if country is None:
            raise InvalidRequest("a region needs a country")
        if region[:2] != _NUTS_COUNTRY.get(country, country):
            raise InvalidRequest(f"region {region} is not in country {country}")
    return country, region


def org_role_may_grant(granter: OrgRole, role: OrgRole) -> bool:
    """Owners may grant any role; managers only plain membership."""
    return granter == OrgRole.OWNER or (granter == OrgRole.MANAGER and role == OrgRole.MEMBER)


@dataclass(frozen=True, slots=True)
class Organisation:
    name: str
    display_name: str
    kind: OrgKind
    country: str | None
    region: str | None
    verified_at: datetime | None
    verified_by: str | None
    created_at: datetime
    my_role: OrgRole | None  # the asking user's role, None for an operator outside it

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


@dataclass(frozen=True, slots=True)
class Member:
    user: str
    role: str


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    organisation: str
    created_at: datetime
    my_role: ProjectRole | None
    # The most network its jobs may have, locked by an operator; None: what the partitions allow.
    network_limit: Network | None = None


@dataclass(frozen=True, slots=True)
class User:
    name: str
    is_operator: bool
    is_reviewer: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a signed-in user is: their platform roles, where they belong and with which role
    (organisations: (name, role); projects: (name, organisation, role)), and the token they
    came with."""

    user_id: int
    user: User
    organisations: tuple[tuple[str, str], ...]
    projects: tuple[tuple[str, str, str], ...]
    token: Token | None


# --- pools ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Eligibility:
    """Who may get an allocation in a pool. Empty: everyone. Regions match by NUTS prefix, so
    NL1 (Noord-Nederland) covers NL11, NL12 and NL13."""

    verified: bool = False
    countries: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    kinds: tuple[OrgKind, ...] = ()

    def check(self, org: Organisation) -> str | None:
        """None if `org` is eligible, else why not (one sentence)."""
        if self.verified and not org.verified:
            return f"organisation {org.name} is not verified by an operator"
        if self.countries and org.country not in self.countries:
            return f"organisation {org.name} is not in {', '.join(self.countries)}"
        if self.regions and not any((org.region or "").startswith(r) for r in self.regions):
            return f"organisation {org.name} is not in region {', '.join(self.regions)}"
        if self.kinds and org.kind not in self.kinds:
            kinds = ", ".join(k.value for k in self.kinds)
            return f"organisation {org.name} is a {org.kind.value}, not one of {kinds}"
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "verified": self.verified,
            "countries": list(self.countries),
            "regions": list(self.regions),
            "kinds": [k.value for k in self.kinds],
        }

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> Eligibility:
        data = data or {}
        return cls(
            verified=bool(data.get("verified", False)),
            countries=tuple(str(c).upper() for c in data.get("countries", ()) or ()),  # type: ignore[attr-defined]
            regions=tuple(str(r).upper() for r in data.get("regions", ()) or ()),  # type: ignore[attr-defined]
            kinds=tuple(OrgKind(k) for k in data.get("kinds", ()) or ()),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True, slots=True)
class PoolInfo:
    name: str
    display_name: str
    guarantee: float
    borrow_limit: float | None
    lend_limit: float
    eligibility: Eligibility
    created_at: datetime


def check_fraction(label: str, value: float | None, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if value is None or not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"{label} must be a fraction from 0 to 1, e.g. 0.25 for 25 %")
    return float(value)


def check_shares(guarantees: dict[str, float]) -> None:
    """The pools' guarantees may not promise more than the whole machine."""
    total = sum(guarantees.values())
    if total > 1.0 + 1e-9:
        parts = ", ".join(f"{name} {share:.0%}" for name, share in sorted(guarantees.items()))
        raise InvalidRequest(
            f"the pools' guarantees would sum to {total:.0%} ({parts}); at most 100 %"
        )
