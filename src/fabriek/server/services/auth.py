"""Users, API tokens and the first administrator."""

from __future__ import annotations

import hashlib
import multiprocessing
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Unauthenticated
from fabriek.core.tenancy import OrgKind, OrgRole, ProjectRole
from fabriek.server.db.models import (
    OrganisationMemberRow,
    OrganisationRow,
    ProjectMemberRow,
    ProjectRow,
    TokenRow,
    UserRow,
)
from fabriek.server.services import audit
from fabriek.server.services.actors import SYSTEM, Actor

TOKEN_PREFIX = "fbk_"
DEFAULT_PROJECT = "default"
DEFAULT_ORGANISATION = "default"
# What a user whose token no longer works can do about it.
NEW_TOKEN_HINT = (
    "get a new one with `fabriek token create NAME` using another token of yours that is still "
    "valid, or from an operator (`fabriek token create NAME --user YOU`), then "
    "`fabriek login URL --token NEW`"
)


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so one round of SHA-256 is enough (no dictionary to guess from)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def authenticate(session: Session, *, token: str, now: datetime) -> Actor:
    """The user behind a bearer token, or Unauthenticated with one sentence saying why."""
    return authenticate_with_expiry(session, token=token, now=now)[0]


def authenticate_with_expiry(
    session: Session, *, token: str, now: datetime
) -> tuple[Actor, datetime | None]:
    """As `authenticate`, with the token's expiry (for TokenCache), from the same single read."""
    row = session.execute(
        select(TokenRow, UserRow)
        .join(UserRow, UserRow.id == TokenRow.user_id)
        .where(TokenRow.token_hash == hash_token(token))
    ).first()
    # `reason` and `user` (never shown to the client) say in the audit trail why and whose.
    if row is None:
        raise Unauthenticated(
            "the API token is not valid; log in again with `fabriek login`", reason="unknown"
        )
    tok, user = row
    if tok.revoked_at is not None:
        raise Unauthenticated(
            f"the API token was revoked; {NEW_TOKEN_HINT}", reason="revoked", user=user.name
        )
    if tok.expires_at is not None and tok.expires_at <= now:
        raise Unauthenticated(
            f"the API token expired on {tok.expires_at:%Y-%m-%d %H:%M} UTC; {NEW_TOKEN_HINT}",
            reason="expired",
            user=user.name,
        )
    actor = Actor(
        user_id=user.id, name=user.name, is_operator=user.is_operator, is_reviewer=user.is_reviewer
    )
    return actor, tok.expires_at


def create_token(
    session: Session,
    *,
    user: UserRow,
    name: str,
    now: datetime,
    actor: Actor,
    expires_at: datetime | None = None,
) -> str:
    """Create a token for `user`; the token is returned once and only its hash is kept."""
    return issue_token(session, user=user, name=name, now=now, actor=actor, expires_at=expires_at)[
        1
    ]


def issue_token(
    session: Session,
    *,
    user: UserRow,
    name: str,
    now: datetime,
    actor: Actor,
    expires_at: datetime | None = None,
) -> tuple[TokenRow, str]:
    """As create_token, with the new row."""
    token = new_token()
    row = TokenRow(
        user_id=user.id,
        name=name,
        token_hash=hash_token(token),
        prefix=token[: len(TOKEN_PREFIX) + 4],
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="token.create",
        target_type="token",
        target_id=row.id,
        at=now,
        user=user.name,
        name=name,
        expires_at=expires_at.isoformat() if expires_at else None,
    )
    return row, token


def bootstrap(session: Session, *, admin_name: str, now: datetime) -> str | None:
    """On an empty database: create the first operator, the default organisation (which it owns),
    its default project (which it manages) and a token for the operator.

    Returns the new token, or None when the database already has users (nothing is changed then).
    """
    if session.scalar(select(UserRow.id).limit(1)) is not None:
        return None
    admin = UserRow(name=admin_name, is_operator=True, is_reviewer=False, created_at=now)
    org = OrganisationRow(
        name=DEFAULT_ORGANISATION,
        display_name="Default organisation",
        kind=OrgKind.OTHER.value,
        created_at=now,
    )
    session.add_all([admin, org])
    session.flush()
    project = ProjectRow(name=DEFAULT_PROJECT, organisation_id=org.id, created_at=now)
    session.add(project)
    session.flush()
    session.add_all(
        [
            OrganisationMemberRow(organisation_id=org.id, user_id=admin.id, role=OrgRole.OWNER),
            ProjectMemberRow(project_id=project.id, user_id=admin.id, role=ProjectRole.MANAGER),
        ]
    )
    audit.record(
        session,
        actor=SYSTEM,
        action="user.create",
        target_type="user",
        target_id=admin.id,
        at=now,
        name=admin_name,
        is_operator=True,
    )
    audit.record(
        session,
        actor=SYSTEM,
        action="organisation.create",
        target_type="organisation",
        target_id=org.id,
        at=now,
        name=DEFAULT_ORGANISATION,
        kind=OrgKind.OTHER.value,
    )
    audit.record(
        session,
        actor=SYSTEM,
        action="project.create",
        target_type="project",
        target_id=project.id,
        at=now,
        name=DEFAULT_PROJECT,
        organisation=DEFAULT_ORGANISATION,
    )
    return create_token(session, user=admin, name="bootstrap", now=now, actor=SYSTEM)


# The key in Session.info that marks a unit of work as changing who may do what.
AUTH_CHANGED = "fabriek.auth_changed"


def auth_changed(session: Session) -> None:
    """Mark this unit of work as changing who may do what: a user's platform roles, a
    membership, a token's validity. When it commits, the server's AuthEpoch moves, and every API
    process stops trusting what it remembered of any token (see watch_auth_changes)."""
    session.info[AUTH_CHANGED] = True


class AuthEpoch:
    """A counter shared by every process of one server, moved after each commit that changes
    roles, memberships or tokens. What a process remembered at an older epoch is not used.

    It lives in shared memory that the main process creates and hands to the API worker
    processes it spawns (`shared`), so that a change committed by one worker is seen by all at
    their next request: reading it is one load from memory, no database round trip.
    """

    def __init__(self, shared: Any | None = None) -> None:
        self.shared = (
            shared if shared is not None else multiprocessing.get_context("spawn").Value("Q", 0)
        )
        self._raw = self.shared.get_obj()  # read without the lock: one aligned 8-byte load

    @property
    def current(self) -> int:
        return int(self._raw.value)

    def bump(self) -> None:
        with self.shared.get_lock():
            self._raw.value += 1


def watch_auth_changes(sessions: sessionmaker[Session], epoch: AuthEpoch) -> None:
    """Move `epoch` after every commit of a session from `sessions` marked by auth_changed(),
    once the change is visible to any reader (after the commit, never before)."""

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        if session.info.pop(AUTH_CHANGED, False):
            epoch.bump()

    @event.listens_for(sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(AUTH_CHANGED, None)


class TokenCache:
    """Remembers recently checked tokens, so most requests need no database read.

    An entry is used only while the AuthEpoch it was read at is current: any change to roles,
    memberships or tokens, committed by any process of this server, voids every entry at once.
    `ttl` bounds what no epoch covers (a row changed in the database by hand): such a change is
    seen at most `ttl` seconds late.
    """

    def __init__(
        self, epoch: AuthEpoch | None = None, ttl: float = 5.0, max_entries: int = 10_000
    ) -> None:
        self.epoch = epoch if epoch is not None else AuthEpoch()
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Actor, datetime | None, float, int]] = {}

    def get(self, token: str, *, now: datetime, monotonic: float) -> Actor | None:
        entry = self._entries.get(hash_token(token))
        if entry is None:
            return None
        actor, expires_at, cached_until, epoch = entry
        if (
            epoch != self.epoch.current
            or monotonic > cached_until
            or (expires_at is not None and expires_at <= now)
        ):
            return None
        return actor

    def put(
        self,
        token: str,
        actor: Actor,
        *,
        expires_at: datetime | None,
        monotonic: float,
        epoch: int,
    ) -> None:
        """Remember `actor`, read from the database at `epoch`: the epoch as it was *before*
        the read, so that a change committed during the read voids the entry."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[hash_token(token)] = (actor, expires_at, monotonic + self.ttl, epoch)
