"""FastAPI dependencies: the runtime, and the authenticated actor behind the bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fabriek.core.errors import Unauthenticated
from fabriek.server.runtime import Runtime
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import authenticate

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer fbk_...`")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def get_actor(
    runtime: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("no API token given; send `Authorization: Bearer <token>`")
    with runtime.reading() as session:
        return authenticate(session, token=credentials.credentials, now=runtime.clock())


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ActorDep = Annotated[Actor, Depends(get_actor)]
