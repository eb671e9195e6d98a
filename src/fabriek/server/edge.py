"""What every request passes before it is routed: a bound on its body, and no control characters
in its URL.

A pure ASGI middleware, so that an oversized body is refused before any of it is kept (a
Content-Length above the limit is refused unread; a body sent without one is counted as it
arrives), and a URL with a control character never reaches a router, a service or the database
(PostgreSQL cannot store U+0000 in text and answered such requests with a 500). FastAPI's own
`max_body_size` would answer text/plain, outside the API's one error shape.

Routes that stream a large body themselves, under their own limit, are named in `STREAMING`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes that read their body themselves, after authentication, under their own limit: a
# workdir upload streams to disk under settings.workdir_max_bytes; an operator's CSV series (three
# years of hourly carbon intensity is 2.2 MiB) under routers.facility.MAX_CSV_BYTES.
STREAMING = frozenset(
    {
        ("POST", "/api/v1/workdirs"),
        ("POST", "/api/v1/facility/carbon"),
        ("PUT", "/api/v1/facility/pue"),
    }
)

# C0 controls and DEL. In a URL none makes sense: names, ids, digests and query values are text.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class EdgeGuard:
    """Refuses, with the API's error shape: a path or query string holding a control character
    once percent-decoded (422 `invalid_request`), and a body over `max_body()` bytes (413
    `too_large`). Everything else passes to `app` unchanged."""

    def __init__(
        self, app: ASGIApp, *, max_body: Callable[[], int], body_seconds: Callable[[], float]
    ) -> None:
        self.app = app
        self.max_body = max_body  # read per request: tests and operators may change the setting
        # A body not all there by then is refused (408): a client that sends a little and waits
        # would otherwise hold its part of max_body for as long as it liked.
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _control_in_url(scope)
        if where is not None:
            await _refuse(send, 422, "invalid_request", where)
            return
        if (scope["method"], scope["path"]) in STREAMING:
            await self.app(scope, receive, send)
            return
        limit = self.max_body()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, "too_large", _too_large(limit))
            return
        seconds = self.body_seconds()
        try:
            async with asyncio.timeout(seconds):
                body, complete = await _read_body(receive, limit)
        except TimeoutError:
            await _refuse(send, 408, "timeout", _too_slow(seconds))
            return
        if not complete:
            await _refuse(send, 413, "too_large", _too_large(limit))
            return
        await self.app(scope, _replay(body, receive), send)


def _control_in_url(scope: Scope) -> str | None:
    """A sentence naming the control character in the path or query, or None."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    for part, raw in (("path", raw_path), ("query string", scope.get("query_string", b""))):
        found = _CONTROL.search(unquote_to_bytes(raw))
        if found is not None:
            code = found.group()[0]
            return (
                f"the URL's {part} holds a control character (U+{code:04X}); names, ids and "
                "query values cannot contain one"
            )
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses these before we see them
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (b"", False) as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: let the app see that
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as Starlette expects

    return replay


def _too_slow(seconds: float) -> str:
    return (
        f"the request body did not arrive within {seconds:g} s "
        "(settings.request_body_seconds); send it at once"
    )


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit:,} bytes "
        "(settings.max_request_bytes); large inputs go up as a workdir "
        "(`POST /api/v1/workdirs`), not in a request"
    )


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status in (408, 413):
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
