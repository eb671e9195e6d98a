from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from fabriek import __version__
from fabriek.server.schemas import Health, Me
from fabriek.server.security.deps import ActorDep, RuntimeDep

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
def health(runtime: RuntimeDep) -> Health:
    """Liveness and readiness: answers only when the database answers. No token needed."""
    with runtime.reading() as session:
        session.execute(text("SELECT 1"))
    return Health(
        status="ok",
        version=__version__,
        database=runtime.engine.dialect.name,
        backend=", ".join(runtime.backends),
        workdir_max_bytes=runtime.settings.workdir_max_bytes,
        api_processes=runtime.settings.api_processes,
    )


@router.get("/whoami", response_model=Me)
def whoami(actor: ActorDep) -> Me:
    assert actor.user_id is not None
    return Me(
        id=actor.user_id,
        name=actor.name,
        is_operator=actor.is_operator,
        is_reviewer=actor.is_reviewer,
    )
