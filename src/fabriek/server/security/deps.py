"""FastAPI dependencies: the runtime, and the authenticated actor behind the bearer token."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fabriek.core.errors import Unauthenticated
from fabriek.server.runtime import Runtime
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import authenticate_with_expiry

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer fbk_...`")


# Both dependencies are `async` so that FastAPI runs them on the event loop instead of handing each
# to a worker thread: a cached token costs no thread switch and no database read.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def get_actor(
    runtime: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("no API token given; send `Authorization: Bearer <token>`")
    token, now, mono = credentials.credentials, runtime.clock(), time.monotonic()
    actor = runtime.tokens.get(token, now=now, monotonic=mono)
    if actor is None:
        epoch = runtime.tokens.epoch.current  # before the read: a change during it voids it
        actor, expires_at = await run_in_threadpool(_check, runtime, token)
        runtime.tokens.put(token, actor, expires_at=expires_at, monotonic=mono, epoch=epoch)
    return actor


def _check(runtime: Runtime, token: str) -> tuple[Actor, datetime | None]:
    with runtime.reading() as session:
        return authenticate_with_expiry(session, token=token, now=runtime.clock())


async def get_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The bearer token itself (with ActorDep, which checks it), e.g. to tell its expiry."""
    return credentials.credentials if credentials else None


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ActorDep = Annotated[Actor, Depends(get_actor)]
TokenDep = Annotated[str | None, Depends(get_token)]
