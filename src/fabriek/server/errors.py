"""The one mapping from errors to HTTP answers: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fabriek.core.errors import FabriekError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media",
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# Pydantic's wording, said as a rule of the field ("cpus: must be greater than or equal to 1").
_PLAINER = (
    ("Value error, ", ""),
    ("Input should be", "must be"),
    ("String should have", "must have"),
    ("String should match pattern", "must match"),
    ("List should have", "must have"),
    ("Dictionary should have", "must have"),
)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg"))
        for lax, plain in _PLAINER:
            msg = msg.replace(lax, plain)
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid request: " + "; ".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API's schema documents at this path (Starlette's own 405 names only
    those of the first route whose path matches: POST for /jobs, although GET /jobs exists)."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        request.app.state, "allowed_methods", None
    )
    if table is None:
        table = [
            (
                re.compile(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"),
                sorted(m.upper() for m in ops),
            )
            for path, ops in request.app.openapi()["paths"].items()
        ]
        request.app.state.allowed_methods = table
    path = request.url.path
    return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FabriekError)
    async def _domain(_: Request, exc: FabriekError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 15.5.6: Allow lists what the resource does support
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        # A uniqueness or reference check lost a race with a concurrent change (the services
        # check first, so this is rare): nothing was written, the request may be repeated.
        log.info("integrity error, answered as a conflict: %s", exc.orig)
        return error_response(
            409, "conflict", "a concurrent change conflicts with this request; nothing was changed"
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "internal error; the server log has the details")
