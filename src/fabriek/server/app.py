"""The FastAPI application: routers under /api/v1, one error mapping, OpenAPI docs at /docs."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from fabriek import __version__
from fabriek.server.edge import EdgeGuard
from fabriek.server.errors import install_error_handlers
from fabriek.server.routers import (
    allocations,
    audit,
    calls,
    facility,
    jobs,
    organisations,
    pools,
    projects,
    reports,
    system,
    users,
    workdirs,
)
from fabriek.server.runtime import Runtime
from fabriek.server.schemas import ErrorResponse

API_PREFIX = "/api/v1"
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts, from the fastapi-offline package


def create_app(runtime: Runtime) -> FastAPI:
    # /docs and /redoc load their scripts from this server, not from a CDN: a factory's closed
    # network (or a laptop offline) would otherwise get blank pages.
    app: FastAPI = FastAPIOffline(
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        title="fabriek",
        version=__version__,
        description="The open platform that runs an AI Factory.",
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(
        EdgeGuard,
        max_body=lambda: runtime.settings.max_request_bytes,
        body_seconds=lambda: runtime.settings.request_body_seconds,
    )
    for router in (
        system.router,
        jobs.router,
        workdirs.router,
        organisations.router,
        projects.router,
        users.users,
        users.tokens,
        pools.router,
        pools.eligibility,
        allocations.router,
        calls.calls,
        calls.applications,
        reports.router,
        facility.router,
        audit.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    return app
