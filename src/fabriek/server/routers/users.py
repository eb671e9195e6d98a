"""Users (operators manage them) and personal API tokens (everyone manages their own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from fabriek.server.schemas import (
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserCreated,
    UserOut,
    UserRoles,
)
from fabriek.server.schemas.types import USER, id_path
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import users as service

users = APIRouter(prefix="/users", tags=["users"])
tokens = APIRouter(prefix="/tokens", tags=["tokens"])

UserName = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": USER})]
TokenId = Annotated[int, id_path("Token")]


@users.post("", response_model=UserCreated, status_code=201)
def create_user(body: UserCreate, actor: ActorDep, runtime: RuntimeDep) -> UserCreated:
    """Operators: a new user, with a first token to hand over (shown once)."""
    with runtime.transaction() as session:
        user, token = service.create_user(
            session,
            actor=actor,
            name=body.name,
            is_operator=body.is_operator,
            is_reviewer=body.is_reviewer,
            token_days=body.token_days,
            now=runtime.clock(),
        )
    return UserCreated(**UserOut.of(user).model_dump(), token=token)


@users.get("", response_model=list[UserOut])
def list_users(actor: ActorDep, runtime: RuntimeDep) -> list[UserOut]:
    """Operators: every user."""
    with runtime.reading() as session:
        return [UserOut.of(u) for u in service.list_users(session, actor=actor)]


@users.get("/{user}", response_model=UserOut)
def get_user(user: UserName, actor: ActorDep, runtime: RuntimeDep) -> UserOut:
    """Yourself; operators anyone."""
    with runtime.reading() as session:
        return UserOut.of(service.get_user(session, actor=actor, name=user))


@users.patch("/{user}", response_model=UserOut)
def set_roles(user: UserName, body: UserRoles, actor: ActorDep, runtime: RuntimeDep) -> UserOut:
    """Operators: grant or withdraw the platform roles operator and reviewer."""
    with runtime.transaction() as session:
        result = service.set_user_roles(
            session,
            actor=actor,
            name=user,
            is_operator=body.is_operator,
            is_reviewer=body.is_reviewer,
            now=runtime.clock(),
        )
    return UserOut.of(result)


@tokens.post("", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, actor: ActorDep, runtime: RuntimeDep) -> TokenCreated:
    """A new personal token for you (shown once), valid for `days` days; operators may make one
    for another `user` (e.g. one whose tokens all expired)."""
    with runtime.transaction() as session:
        token, secret = service.new_token(
            session,
            actor=actor,
            name=body.name,
            days=body.days,
            user=body.user,
            now=runtime.clock(),
        )
    return TokenCreated(**TokenOut.of(token).model_dump(), token=secret)


@tokens.get("", response_model=list[TokenOut])
def list_tokens(
    actor: ActorDep,
    runtime: RuntimeDep,
    user: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            json_schema_extra={"pattern": USER},
            description="Operators: whose.",
        ),
    ] = None,
) -> list[TokenOut]:
    """Your tokens, revoked and expired ones included; never the secrets."""
    with runtime.reading() as session:
        return [TokenOut.of(t) for t in service.list_tokens(session, actor=actor, user=user)]


@tokens.get("/{token_id}", response_model=TokenOut)
def get_token(token_id: TokenId, actor: ActorDep, runtime: RuntimeDep) -> TokenOut:
    """One of your tokens (operators: anyone's); never its secret."""
    with runtime.reading() as session:
        return TokenOut.of(service.get_token(session, actor=actor, token_id=token_id))


@tokens.delete("/{token_id}", response_model=TokenOut)
def revoke(token_id: TokenId, actor: ActorDep, runtime: RuntimeDep) -> TokenOut:
    """Revoke one of your tokens (operators: anyone's). It stops working at once, on every API
    process of the server."""
    with runtime.transaction() as session:
        token = service.revoke_token(session, actor=actor, token_id=token_id, now=runtime.clock())
    return TokenOut.of(token)
