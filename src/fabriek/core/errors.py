"""One error hierarchy with stable codes.

Services raise these; the API maps them to HTTP status codes and the CLI to exit codes, each in one place
(`server/errors.py`, `cli/output.py`). The `code` strings are part of the public API: never rename one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FabriekError(Exception):
    """Base of every error fabriek reports to a user."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(FabriekError):
    """The request is malformed or asks for something impossible."""

    code = "invalid_request"
    http_status = 422
    exit_code = 2


class ResourcesUnavailable(InvalidRequest):
    """The request asks for more than the factory has, so it could never run."""

    code = "resources_unavailable"


class BeyondGuarantee(ResourcesUnavailable):
    """A job that may not be preempted needs more GPUs than its pool's whole guarantee: only
    preemptible jobs borrow beyond it, so it could never start."""

    code = "beyond_guarantee"


class TooLarge(InvalidRequest):
    """A request's body is over a limit."""

    code = "too_large"
    http_status = 413


class WorkdirTooLarge(InvalidRequest):
    code = "workdir_too_large"
    http_status = 413


class OutputsTooLarge(InvalidRequest):
    """A job's outputs are more than one download may send (bytes, or files and directories)."""

    code = "outputs_too_large"
    http_status = 413


class FilesRemoved(FabriekError):
    """The job's outputs and logs existed, and the retention policy has removed them."""

    code = "files_removed"
    http_status = 410
    exit_code = 4


class Unauthenticated(FabriekError):
    code = "unauthenticated"
    http_status = 401
    exit_code = 3


class Forbidden(FabriekError):
    code = "forbidden"
    http_status = 403
    exit_code = 3


class NetworkNotAllowed(Forbidden):
    """A job asks for more network than its project's lock or its partition allows
    (core.identity.Network: none < loopback < host)."""

    code = "network_not_allowed"


class NotFound(FabriekError):
    code = "not_found"
    http_status = 404
    exit_code = 4


class Conflict(FabriekError):
    """The request is valid but the object's current state does not allow it."""

    code = "conflict"
    http_status = 409
    exit_code = 5


class IllegalTransition(Conflict):
    code = "illegal_transition"


class AllocationExhausted(Conflict):
    """The allocation has too few GPU-hours left for what the job may use."""

    code = "allocation_exhausted"


class QuotaExceeded(Conflict):
    """The project's jobs hold as much disk as its quota allows, or more."""

    code = "quota_exceeded"


class AllocationExpired(Conflict):
    """The allocation's period has not begun or is over."""

    code = "allocation_expired"


class IsolationUnavailable(FabriekError):
    """FABRIEK_REQUIRE_ISOLATION is set and this machine cannot isolate jobs fully."""

    code = "isolation_unavailable"
    http_status = 503
    exit_code = 6


class ServerUnavailable(FabriekError):
    """The client could not reach a fabriek server."""

    code = "server_unavailable"
    http_status = 503
    exit_code = 6


ERRORS_BY_CODE: dict[str, type[FabriekError]] = {
    cls.code: cls
    for cls in (
        FabriekError,
        InvalidRequest,
        ResourcesUnavailable,
        BeyondGuarantee,
        AllocationExhausted,
        AllocationExpired,
        WorkdirTooLarge,
        OutputsTooLarge,
        FilesRemoved,
        QuotaExceeded,
        Unauthenticated,
        Forbidden,
        NetworkNotAllowed,
        NotFound,
        Conflict,
        IllegalTransition,
        IsolationUnavailable,
        ServerUnavailable,
    )
}


def error_from_code(code: str, message: str) -> FabriekError:
    """Rebuild a domain error from an API error body (used by the SDK)."""
    return ERRORS_BY_CODE.get(code, FabriekError)(message)
