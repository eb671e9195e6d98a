from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from fabriek.core.errors import WorkdirTooLarge
from fabriek.server.schemas import WorkdirOut
from fabriek.server.security.deps import ActorDep, RuntimeDep
from fabriek.server.services import workdirs as service

router = APIRouter(prefix="/workdirs", tags=["workdirs"])


def _out(w: service.Workdir) -> WorkdirOut:
    return WorkdirOut(
        digest=w.digest, size_bytes=w.size_bytes, unpacked_bytes=w.unpacked_bytes, files=w.files
    )


@router.post("", response_model=WorkdirOut, status_code=201)
async def upload(request: Request, actor: ActorDep, runtime: RuntimeDep) -> WorkdirOut:
    """Upload a workdir as the raw body, a gzip'd tar archive (`Content-Type: application/gzip`)."""
    limit = runtime.settings.workdir_max_bytes
    store = runtime.settings.workdirs_dir
    store.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store, suffix=".upload")
    try:
        received = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise WorkdirTooLarge(
                        f"the workdir archive is larger than the limit of {limit // 2**20} MiB"
                    )
                f.write(chunk)

        def keep() -> service.Workdir:
            kept = service.keep_archive(
                upload=Path(tmp), store=store, limits=service.limits_of(runtime.settings)
            )
            with runtime.transaction() as session:
                return service.record_workdir(
                    session, actor=actor, workdir=kept, now=runtime.clock()
                )

        return _out(await run_in_threadpool(keep))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@router.get("/{digest}", response_model=WorkdirOut)
def get(
    digest: Annotated[str, PathParam(pattern="^[0-9a-f]{64}$")],
    actor: ActorDep,
    runtime: RuntimeDep,
) -> WorkdirOut:
    with runtime.reading() as session:
        return _out(service.get_workdir(session, actor=actor, digest=digest))
