"""Users, their platform roles, and their personal API tokens.

Operators create users (each with a first token to hand over) and grant platform roles. Everyone
manages their own tokens; operators may list and revoke anyone's. A changed role and a revoked
token hold from the commit on, in every API process of the server (auth.auth_changed).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fabriek.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from fabriek.core.tenancy import Identity, Token, User, check_user_name
from fabriek.core.text import check_label
from fabriek.server.db.models import (
    OrganisationMemberRow,
    OrganisationRow,
    ProjectMemberRow,
    ProjectRow,
    TokenRow,
    UserRow,
)
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import auth_changed, create_token, hash_token, issue_token

DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 366


def _to_user(row: UserRow) -> User:
    return User(row.name, row.is_operator, row.is_reviewer, row.created_at)


def _require_operator(actor: Actor, what: str) -> None:
    if not actor.is_operator:
        raise Forbidden(f"only operators {what}")


def _user(session: Session, name: str) -> UserRow:
    row = session.scalar(select(UserRow).where(UserRow.name == name))
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return row


def create_user(
    session: Session,
    *,
    actor: Actor,
    name: str,
    is_operator: bool = False,
    is_reviewer: bool = False,
    token_days: int = DEFAULT_TOKEN_DAYS,
    now: datetime,
) -> tuple[User, str]:
    """A new user and their first token (shown once), for the operator to hand over."""
    _require_operator(actor, "create users")
    check_user_name(name)
    expires_at = _expiry(token_days, now)
    if session.scalar(select(UserRow.id).where(UserRow.name == name)):
        raise Conflict(f"a user named {name!r} exists already")
    row = UserRow(name=name, is_operator=is_operator, is_reviewer=is_reviewer, created_at=now)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="user.create",
        target_type="user",
        target_id=row.id,
        at=now,
        name=name,
        is_operator=is_operator,
        is_reviewer=is_reviewer,
    )
    token = create_token(
        session, user=row, name="first", now=now, actor=actor, expires_at=expires_at
    )
    return _to_user(row), token


def list_users(session: Session, *, actor: Actor) -> list[User]:
    _require_operator(actor, "list all users")
    return [_to_user(r) for r in session.scalars(select(UserRow).order_by(UserRow.name))]


def get_user(session: Session, *, actor: Actor, name: str) -> User:
    if name != actor.name:
        _require_operator(actor, "look at other users")
    return _to_user(_user(session, name))


def identity(session: Session, *, actor: Actor, token: str | None = None) -> Identity:
    """The actor as they see themselves: roles, memberships with their roles, and `token`
    (the secret they signed in with; only its hash is looked up) if it is theirs."""
    row = session.get(UserRow, actor.user_id)
    if row is None:
        raise NotFound("no such user")
    organisations = session.execute(
        select(OrganisationRow.name, OrganisationMemberRow.role)
        .join(OrganisationMemberRow, OrganisationMemberRow.organisation_id == OrganisationRow.id)
        .where(OrganisationMemberRow.user_id == row.id)
        .order_by(OrganisationRow.name)
    ).all()
    projects = session.execute(
        select(ProjectRow.name, OrganisationRow.name, ProjectMemberRow.role)
        .join(ProjectMemberRow, ProjectMemberRow.project_id == ProjectRow.id)
        .join(OrganisationRow, OrganisationRow.id == ProjectRow.organisation_id)
        .where(ProjectMemberRow.user_id == row.id)
        .order_by(ProjectRow.name)
    ).all()
    found = None
    if token is not None:
        found = session.scalar(
            select(TokenRow).where(
                TokenRow.token_hash == hash_token(token), TokenRow.user_id == row.id
            )
        )
    return Identity(
        row.id,
        _to_user(row),
        tuple((name, role) for name, role in organisations),
        tuple((name, org, role) for name, org, role in projects),
        _to_token(found, row.name) if found else None,
    )


def set_user_roles(
    session: Session,
    *,
    actor: Actor,
    name: str,
    is_operator: bool | None = None,
    is_reviewer: bool | None = None,
    now: datetime,
) -> User:
    _require_operator(actor, "grant platform roles")
    row = _user(session, name)
    changes = {
        key: value
        for key, value in (("is_operator", is_operator), ("is_reviewer", is_reviewer))
        if value is not None and getattr(row, key) != value
    }
    if changes.get("is_operator") is False:
        # Locked, so that two operators demoting each other at once cannot both pass.
        session.execute(select(UserRow.id).where(UserRow.is_operator.is_(True)).with_for_update())
        operators = session.scalar(select(func.count()).where(UserRow.is_operator.is_(True)))
        if operators == 1:
            raise Conflict(f"{name!r} is the last operator; make someone else operator first")
    if changes:
        for key, value in changes.items():
            setattr(row, key, value)
        auth_changed(session)
        audit.record(
            session,
            actor=actor,
            action="user.roles",
            target_type="user",
            target_id=row.id,
            at=now,
            name=name,
            **changes,
        )
    return _to_user(row)


# --- tokens -------------------------------------------------------------------------------------
def _expiry(days: int, now: datetime) -> datetime:
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise InvalidRequest(f"a token lives 1 to {MAX_TOKEN_DAYS} days, not {days}")
    return now + timedelta(days=days)


def _to_token(row: TokenRow, user: str) -> Token:
    return Token(row.id, user, row.name, row.prefix, row.created_at, row.expires_at, row.revoked_at)


def new_token(
    session: Session,
    *,
    actor: Actor,
    name: str,
    days: int = DEFAULT_TOKEN_DAYS,
    user: str | None = None,
    now: datetime,
) -> tuple[Token, str]:
    """A token for the actor, or (operators) for `user`, e.g. one whose tokens all expired; the
    secret is returned once, only its hash is kept."""
    check_label(name, what="token name", max_len=128)
    if user is not None and user != actor.name:
        _require_operator(actor, "create tokens for other users")
        owner = _user(session, user)
    else:
        found = session.get(UserRow, actor.user_id)
        assert found is not None
        owner = found
    row, secret = issue_token(
        session, user=owner, name=name.strip(), now=now, actor=actor, expires_at=_expiry(days, now)
    )
    return _to_token(row, owner.name), secret


def list_tokens(session: Session, *, actor: Actor, user: str | None = None) -> list[Token]:
    """The actor's tokens; an operator may ask for another user's."""
    name = user or actor.name
    if name != actor.name:
        _require_operator(actor, "list other users' tokens")
    owner = _user(session, name)
    rows = session.scalars(
        select(TokenRow).where(TokenRow.user_id == owner.id).order_by(TokenRow.id)
    )
    return [_to_token(r, owner.name) for r in rows]


def get_token(session: Session, *, actor: Actor, token_id: int) -> Token:
    """One of the actor's tokens (an operator: anyone's); others' are reported absent."""
    found = session.execute(
        select(TokenRow, UserRow.name)
        .join(UserRow, UserRow.id == TokenRow.user_id)
        .where(TokenRow.id == token_id)
    ).first()
    if found is None or (found[0].user_id != actor.user_id and not actor.is_operator):
        raise NotFound(f"no token {token_id} of yours")
    return _to_token(*found)


def revoke_token(session: Session, *, actor: Actor, token_id: int, now: datetime) -> Token:
    """Revoke one of the actor's tokens (an operator: anyone's). Revoking twice changes nothing."""
    found = session.execute(
        select(TokenRow, UserRow.name)
        .join(UserRow, UserRow.id == TokenRow.user_id)
        .where(TokenRow.id == token_id)
        .with_for_update(of=TokenRow)
    ).first()
    if found is None or (found[0].user_id != actor.user_id and not actor.is_operator):
        raise NotFound(f"no token {token_id} of yours")
    row, owner = found
    if row.revoked_at is None:
        row.revoked_at = now
        auth_changed(session)
        audit.record(
            session,
            actor=actor,
            action="token.revoke",
            target_type="token",
            target_id=row.id,
            at=now,
            user=owner,
            name=row.name,
        )
    return _to_token(row, owner)
