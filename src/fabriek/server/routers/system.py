from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from fabriek import __version__
from fabriek.server.schemas import FactoryOut, Health, Me
from fabriek.server.security.deps import ActorDep, RuntimeDep, TokenDep
from fabriek.server.services import users
from fabriek.server.services.partitions import factory_now

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
        workdir_max_entries=runtime.settings.workdir_max_entries,
        api_processes=runtime.settings.api_processes,
    )


@router.get("/whoami", response_model=Me)
def whoami(actor: ActorDep, token: TokenDep, runtime: RuntimeDep) -> Me:
    """You: platform roles, organisations and projects with your role, and this token's expiry."""
    with runtime.reading() as session:
        return Me.of(users.identity(session, actor=actor, token=token))


@router.get("/partitions", response_model=FactoryOut)
def partitions(actor: ActorDep, runtime: RuntimeDep) -> FactoryOut:
    """What `sinfo` shows: each partition's nodes, GPUs and what is busy now, and how many jobs
    run and wait in each pool. Anyone signed in; counts only, no one's jobs named."""
    with runtime.reading() as session:
        return FactoryOut.of(factory_now(session, partitions=runtime.partitions()))
