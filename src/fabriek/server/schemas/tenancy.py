"""API schemas: organisations, projects, users and tokens."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from fabriek.core.identity import Network
from fabriek.core.tenancy import (
    Organisation,
    OrgKind,
    OrgRole,
    Project,
    ProjectRole,
    Token,
    User,
)
from fabriek.server.schemas.types import (
    Count,
    Flag,
    Input,
    Label,
    ProjectName,
    ShortLabel,
    SlugName,
    UserName,
)
from fabriek.server.services.users import MAX_TOKEN_DAYS


class OrganisationCreate(Input):
    name: SlugName = Field(
        description="Short handle: lower-case letters, digits and '-' (e.g. rug)."
    )
    display_name: Label = Field(description="Full name, e.g. University of Groningen.")
    kind: OrgKind
    country: str | None = Field(None, description="ISO 3166-1 alpha-2, e.g. NL.")
    region: str | None = Field(None, description="NUTS code, e.g. NL11 (Groningen).")


class OrganisationUpdate(Input):
    display_name: Label | None = None
    kind: OrgKind | None = None
    country: str | None = None
    region: str | None = None


class Verification(Input):
    verified: Flag = True


class OrganisationOut(BaseModel):
    name: str
    display_name: str
    kind: OrgKind
    country: str | None
    region: str | None
    verified: bool
    verified_at: datetime | None
    verified_by: str | None
    created_at: datetime
    my_role: OrgRole | None = Field(description="Your role in it (none for an operator outside).")

    @classmethod
    def of(cls, o: Organisation) -> OrganisationOut:
        return cls(
            name=o.name,
            display_name=o.display_name,
            kind=o.kind,
            country=o.country,
            region=o.region,
            verified=o.verified,
            verified_at=o.verified_at,
            verified_by=o.verified_by,
            created_at=o.created_at,
            my_role=o.my_role,
        )


class OrgMemberSet(Input):
    role: OrgRole = OrgRole.MEMBER


class ProjectMemberSet(Input):
    role: ProjectRole = ProjectRole.MEMBER


class MemberOut(BaseModel):
    user: str
    role: str


class ProjectCreate(Input):
    name: ProjectName
    organisation: SlugName


class ProjectUpdate(Input):
    network_limit: Network | None = Field(
        None,
        description="Operators only: the most network its jobs may have (none, loopback; host "
        "lifts the lock). Left out: unchanged.",
    )


class ProjectOut(BaseModel):
    name: str
    organisation: str
    created_at: datetime
    my_role: ProjectRole | None
    network_limit: Network | None = Field(
        None,
        description="The most network its jobs may have, locked by an operator; none: what "
        "its partitions allow.",
    )

    @classmethod
    def of(cls, p: Project) -> ProjectOut:
        return cls(
            name=p.name,
            organisation=p.organisation,
            created_at=p.created_at,
            my_role=p.my_role,
            network_limit=p.network_limit,
        )


class UserCreate(Input):
    name: UserName
    is_operator: Flag = False
    is_reviewer: Flag = False
    token_days: Count = Field(
        90,
        description="Lifetime of the user's first token, in days.",
        json_schema_extra={"minimum": 1, "maximum": MAX_TOKEN_DAYS},
    )


class UserRoles(Input):
    is_operator: Flag | None = None
    is_reviewer: Flag | None = None


class UserOut(BaseModel):
    name: str
    is_operator: bool
    is_reviewer: bool
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(
            name=u.name,
            is_operator=u.is_operator,
            is_reviewer=u.is_reviewer,
            created_at=u.created_at,
        )


class TokenCreate(Input):
    name: ShortLabel
    days: Count = Field(
        90,
        description="Lifetime in days (1-366).",
        json_schema_extra={"minimum": 1, "maximum": MAX_TOKEN_DAYS},
    )
    user: UserName | None = Field(None, description="Operators: whose (default: yours).")


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str = Field(description="The first characters, to recognise it by.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, t: Token) -> TokenOut:
        return cls(
            id=t.id,
            user=t.user,
            name=t.name,
            prefix=t.prefix,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="The secret. Shown only now: keep it.")


class UserCreated(UserOut):
    token: str = Field(description="The user's first token. Shown only now: hand it over.")
