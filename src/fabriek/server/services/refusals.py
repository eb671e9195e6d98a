"""Refused attempts, in the audit trail: a presented token refused (unknown, revoked, expired),
and a 403 or 404 answered to a signed-in user (another tenant's job, an operator's command).

What is kept is bounded and never a blob the client chose: the route's template
(`/api/v1/jobs/{job_id}`, not the path), its path values and the error's message cut to a few
dozen characters with hidden characters escaped, the error's code, the client's address, and of a
token only its first 8 characters, and only if it has the shape of ours (the prefix `fabriek token
list` shows). Never a request's body or query, never a whole presented token.

Rate-limited per (who, action), who being the user (`user:anna`) or, for a refused token, the
client's address (`client:192.0.2.7`): the first refusal of a window (`window_s`, 60 s by
default) is written at once, in a short transaction of its own (the request's was rolled back);
the others of the window are counted and written as one `<action>.repeated` event when it has
ended. The count is kept per API process: with N processes, up to N first events a window.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.audit import FORBIDDEN, NOT_FOUND, TOKEN_REFUSED
from fabriek.core.errors import FabriekError, Forbidden, NotFound, Unauthenticated
from fabriek.server.db.engine import transaction
from fabriek.server.db.models import (
    AllocationRow,
    ApplicationRow,
    CallRow,
    JobRow,
    OrganisationRow,
    PoolRow,
    ProjectRow,
    TokenRow,
    UserRow,
    WorkdirRow,
)
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import TOKEN_PREFIX

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_KEYS = 10_000  # windows kept per process; beyond, new keys count under who `*`
MAX_VALUE = 64  # characters kept of a path value (a target id column holds 64)
MAX_MESSAGE = 200
MAX_PARAMS = 4
MAX_ROUTES = 5  # distinct routes named in a `.repeated` event
_OURS = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")
SHOWN_PREFIX = len(TOKEN_PREFIX) + 4  # as TokenRow.prefix

# A route's path parameter -> the target type it names, and the column that finds its object
# (to tell a 404 on another tenant's object from one on nothing).
_TARGETS: dict[str, tuple[str, Any]] = {
    "job_id": ("job", JobRow.id),
    "token_id": ("token", TokenRow.id),
    "allocation_id": ("allocation", AllocationRow.id),
    "application_id": ("application", ApplicationRow.id),
    "org": ("organisation", OrganisationRow.name),
    "project": ("project", ProjectRow.name),
    "user": ("user", UserRow.name),
    "pool": ("pool", PoolRow.name),
    "call": ("call", CallRow.name),
    "digest": ("workdir", WorkdirRow.digest),
}
# A 404 on these is an answer, not a refusal: `GET /workdirs/{digest}` asks "have I uploaded
# this content yet?" before every upload (another user's copy is no one else's business).
_QUESTIONS = frozenset({"digest"})


def clean(text: str, limit: int = MAX_VALUE) -> str:
    """`text` safe to keep and to show: hidden characters (controls, bidi overrides, zero
    widths) as escapes, at most `limit` characters."""
    shown = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text[: limit + 1])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


@dataclass(slots=True)
class Refusal:
    who: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]
    # For a 404: the column and value that find the object the route names, if any.
    lookup: tuple[Any, Any] | None = None


def token_refused(token: str, error: Unauthenticated, *, client: str, route: str,
                  method: str) -> Refusal:  # fmt: skip
    """A presented token was refused."""
    ours = _OURS.fullmatch(token) is not None
    details: dict[str, Any] = {
        "reason": clean(str(error.details.get("reason", "unknown")), 16),
        "token": token[:SHOWN_PREFIX] if ours else "not a fabriek token",
        "method": clean(method, 8),
        "route": clean(route, MAX_MESSAGE),
        "client": clean(client),
    }
    if error.details.get("user"):  # a token of ours, revoked or expired: whose it was
        details["user"] = clean(str(error.details["user"]), 128)
    return Refusal(
        f"client:{clean(client)}",
        TOKEN_REFUSED,
        "token",
        token[:SHOWN_PREFIX] if ours else "-",
        details,
    )


def access_refused(
    actor: Actor,
    error: FabriekError,
    *,
    client: str,
    route: str,
    method: str,
    params: Mapping[str, Any],
) -> Refusal | None:
    """A 403 or 404 answered to a signed-in `actor`; None for other errors, and for a 404 that
    answers a question (_QUESTIONS)."""
    if isinstance(error, Forbidden):
        action = FORBIDDEN
    elif isinstance(error, NotFound):
        action = NOT_FOUND
    else:
        return None
    if action == NOT_FOUND and next(iter(params), None) in _QUESTIONS:
        return None
    values = {clean(str(k), 32): clean(str(v)) for k, v in list(params.items())[:MAX_PARAMS]}
    target_type, target_id, lookup = "route", clean(route), None
    for name, value in params.items():  # the route's first parameter names its object
        if name in _TARGETS:
            target_type, column = _TARGETS[name]
            target_id = clean(str(value))
            lookup = (column, value) if action == NOT_FOUND else None
        break
    details: dict[str, Any] = {
        "method": clean(method, 8),
        "route": clean(route, MAX_MESSAGE),
        "code": error.code,
        "message": clean(error.message, MAX_MESSAGE),
        "client": clean(client),
    }
    if values:
        details["params"] = values
    return Refusal(actor.label, action, target_type, target_id, details, lookup)


@dataclass(slots=True)
class _Window:
    ends: float  # monotonic
    first_at: datetime
    target: tuple[str, str]
    repeats: int = 0
    last_at: datetime | None = None
    same_target: bool = True
    routes: list[str] = field(default_factory=list)


class RefusalLog:
    """Writes refusals to the audit trail, rate-limited per (who, action) (module docstring).

    `note` is cheap (memory only) and says whether to `write` the refusal now; a thread of its
    own, started at the first repeat, writes each window's `.repeated` event when it ends, and
    `close` writes those still open.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], datetime],
        window_s: float = WINDOW_S,
        max_keys: int = MAX_KEYS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.window_s = window_s
        self._max_keys = max_keys
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        # Windows replaced by a new one before the flusher wrote their repeats.
        self._pending: list[tuple[tuple[str, str], _Window]] = []
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def note(self, refusal: Refusal) -> bool:
        """Count `refusal`. True: it opens its window, `write` it now; False: counted, it is
        part of the window's `.repeated` event."""
        now = self._monotonic()
        key = (refusal.who, refusal.action)
        with self._lock:
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self._max_keys:
                for k, w in list(self._windows.items()):  # make room: windows that ended
                    if now >= w.ends:
                        del self._windows[k]
                        if w.repeats:  # the flusher writes their count
                            self._pending.append((k, w))
                if len(self._windows) >= self._max_keys:
                    key = ("*", refusal.action)  # a flood of addresses: one window for all
                    window = self._windows.get(key)
            if window is not None and now < window.ends:
                window.repeats += 1
                window.last_at = self._clock()
                window.same_target &= window.target == (refusal.target_type, refusal.target_id)
                route = refusal.details.get("route", "")
                if route not in window.routes and len(window.routes) < MAX_ROUTES:
                    window.routes.append(route)
                self._start_flusher()
                return False
            # A window that ended with repeats is written by the flusher (it holds a copy).
            if window is not None and window.repeats:
                self._pending.append((key, window))
            self._windows[key] = _Window(
                now + self.window_s,
                self._clock(),
                (refusal.target_type, refusal.target_id),
                routes=[refusal.details.get("route", "")],
            )
            return True

    def write(self, refusal: Refusal) -> None:
        """Write `refusal` in a transaction of its own; a failure is logged, never raised (the
        client gets its answer either way)."""
        try:
            with transaction(self._sessions) as session:
                details = dict(refusal.details)
                if refusal.lookup is not None:
                    details["exists"] = _exists(session, *refusal.lookup)
                audit.append(
                    session,
                    actor=refusal.who,
                    action=refusal.action,
                    target_type=refusal.target_type,
                    target_id=refusal.target_id,
                    at=self._clock(),
                    details=details,
                )
        except Exception:
            log.exception("could not record a refusal in the audit trail")

    def flush(self, *, everything: bool = False) -> int:
        """Write the `.repeated` event of each window that has ended (`everything`: of every
        window) with repeats; returns how many were written."""
        now = self._monotonic()
        with self._lock:
            due = self._pending
            self._pending = []
            for key, window in list(self._windows.items()):
                if everything or now >= window.ends:
                    del self._windows[key]
                    if window.repeats:
                        due.append((key, window))
        if not due:
            return 0
        try:
            with transaction(self._sessions) as session:
                for (who, action), window in due:
                    target = window.target if window.same_target else ("*", "*")
                    audit.append(
                        session,
                        actor=who,
                        action=f"{action}.repeated",
                        target_type=target[0],
                        target_id=target[1],
                        at=self._clock(),
                        details={
                            "repeats": window.repeats,
                            "first_at": window.first_at.isoformat(),
                            "last_at": (window.last_at or window.first_at).isoformat(),
                            "window_s": self.window_s,
                            "routes": window.routes,
                        },
                    )
        except Exception:
            log.exception("could not record repeated refusals in the audit trail")
            return 0
        return len(due)

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._stop.is_set():
            self._flusher = threading.Thread(target=self._run, name="audit-refusals", daemon=True)
            self._flusher.start()

    def _run(self) -> None:
        interval = max(0.1, min(self.window_s / 2, 30.0))
        while not self._stop.wait(interval):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write every window's repeats counted so far."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self.flush(everything=True)


def _exists(session: Session, column: Any, value: Any) -> bool:
    """Whether the object a 404 was about exists (then it is someone else's). A value that can
    name nothing (no 32-bit id, a NUL, longer than any name) is not looked up: the query could
    fail, and the answer is no."""
    if column.type.python_type is int:
        try:
            value = int(value)
        except (TypeError, ValueError):
            return False
        if not 1 <= value <= 2**31 - 1:
            return False
    elif not isinstance(value, str) or "\x00" in value or len(value) > 256:
        return False
    return session.scalar(select(column).where(column == value).limit(1)) is not None
