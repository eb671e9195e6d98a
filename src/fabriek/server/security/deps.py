"""FastAPI dependencies: the runtime, and the authenticated actor behind the bearer token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fabriek.core.errors import Forbidden, NotFound, Unauthenticated
from fabriek.server.runtime import Runtime
from fabriek.server.services import refusals
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import authenticate_with_expiry

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer fbk_...`")


# Both dependencies are `async` so that FastAPI runs them on the event loop instead of handing each
# to a worker thread: a cached token costs no thread switch and no database read.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def get_actor(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AsyncIterator[Actor]:
    """The actor behind the bearer token. A refused token, and a 403 or 404 that the request
    then gets, are recorded in the audit trail (services.refusals)."""
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("no API token given; send `Authorization: Bearer <token>`")
    token, now, mono = credentials.credentials, runtime.clock(), time.monotonic()
    actor = runtime.tokens.get(token, now=now, monotonic=mono)
    if actor is None:
        epoch = runtime.tokens.epoch.current  # before the read: a change during it voids it
        try:
            actor, expires_at = await run_in_threadpool(_check, runtime, token)
        except Unauthenticated as exc:
            where = _where(request)
            await _refused(runtime, refusals.token_refused(token, exc, **where))
            raise
        runtime.tokens.put(token, actor, expires_at=expires_at, monotonic=mono, epoch=epoch)
    try:
        yield actor
    except (Forbidden, NotFound) as exc:
        refusal = refusals.access_refused(actor, exc, params=request.path_params, **_where(request))
        if refusal is not None:
            await _refused(runtime, refusal)
        raise


def _where(request: Request) -> dict[str, str]:
    """The client's address, the route's template (never the raw path) and the method."""
    return {
        "client": request.client.host if request.client else "unknown",
        "route": _template(request),
        "method": request.method,
    }


def _template(request: Request) -> str:
    """The matched route's template with the prefix it was included under: `/api/v1/jobs/
    {job_id}`. (The route knows its own part only; the prefix is the path's leading segments,
    which matched it literally.)"""
    template = str(getattr(request.scope.get("route"), "path", "") or "?")
    path = request.url.path.rstrip("/").split("/")
    own = template.rstrip("/").split("/")
    if len(path) > len(own) and template.startswith("/"):
        return "/".join(path[: len(path) - len(own) + 1]) + template
    return template


async def _refused(runtime: Runtime, refusal: refusals.Refusal) -> None:
    if runtime.refusals is not None and runtime.refusals.note(refusal):
        await run_in_threadpool(runtime.refusals.write, refusal)


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
