"""`fabriek.Client`: the typed Python SDK over the REST API (the CLI is built on it)."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fabriek.client.config import load_config
from fabriek.client.packing import PackedWorkdir, pack
from fabriek.core.errors import (
    FabriekError,
    InvalidRequest,
    ServerUnavailable,
    Unauthenticated,
    error_from_code,
)
from fabriek.core.jobs import JobState
from fabriek.server.schemas import Health, JobOut, Me, WorkdirOut

API = "/api/v1"


class Client:
    """A connection to a fabriek server.

    >>> client = Client()                      # FABRIEK_URL/FABRIEK_TOKEN or the CLI's config
    >>> job = client.submit(["python", "train.py"], name="train", cpus=2, workdir=".")
    >>> client.wait(job.id).state
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ) -> None:
        config = load_config(url, token)
        if not config.url:
            raise ServerUnavailable(
                "no fabriek server configured: run `fabriek up` here, or `fabriek login URL --token T`, "
                "or set FABRIEK_URL and FABRIEK_TOKEN"
            )
        self.url = config.url.rstrip("/")
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._http = httpx.Client(base_url=self.url + API, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"cannot reach the fabriek server at {self.url} ({exc.__class__.__name__}); "
                "is `fabriek up` running?"
            ) from exc
        if response.is_success:
            return response
        raise _error_of(response)

    # --- system -------------------------------------------------------------------------------
    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/health").json())

    def whoami(self) -> Me:
        if "Authorization" not in self._http.headers:
            raise Unauthenticated(
                "no API token configured; log in with `fabriek login URL --token T`"
            )
        return Me.model_validate(self._request("GET", "/whoami").json())

    # --- workdirs -----------------------------------------------------------------------------
    def upload_workdir(self, directory: str | Path) -> str:
        """Pack `directory` and upload it unless the server already has it; return its digest."""
        # Check the server's limit here, so that the error can name the biggest files.
        packed: PackedWorkdir = pack(Path(directory), limit=self.health().workdir_max_bytes)
        try:
            self._request("GET", f"/workdirs/{packed.digest}")
            return packed.digest
        except FabriekError as exc:
            if exc.code != "not_found":
                raise
        stored = WorkdirOut.model_validate(
            self._request(
                "POST",
                "/workdirs",
                content=packed.data,
                headers={"Content-Type": "application/gzip"},
            ).json()
        )
        return stored.digest

    # --- jobs ---------------------------------------------------------------------------------
    def submit(
        self,
        argv: list[str],
        *,
        name: str | None = None,
        project: str = "default",
        cpus: int = 1,
        memory_bytes: int = 2 * 1024**3,
        gpus: int = 0,
        time_limit_s: int = 3600,
        env: dict[str, str] | None = None,
        workdir: str | Path | None = None,
    ) -> JobOut:
        """Queue a job. `workdir` is packed and uploaded; the job runs in a fresh copy of it."""
        if not argv:
            raise InvalidRequest(
                "the command is empty; give it after `--`, e.g. -- python train.py"
            )
        digest = self.upload_workdir(workdir) if workdir is not None else None
        body = {
            "name": name or Path(argv[0]).name,
            "project": project,
            "argv": argv,
            "cpus": cpus,
            "memory_bytes": memory_bytes,
            "gpus": gpus,
            "time_limit_s": time_limit_s,
            "env": env or {},
            "workdir": digest,
        }
        return JobOut.model_validate(self._request("POST", "/jobs", json=body).json())

    def jobs(self, *, states: list[JobState] | None = None, limit: int = 100) -> list[JobOut]:
        params: dict[str, Any] = {"limit": limit}
        if states:
            params["state"] = [s.value for s in states]
        return [
            JobOut.model_validate(j) for j in self._request("GET", "/jobs", params=params).json()
        ]

    def job(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def cancel(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def read_logs(self, job_id: int, offset: int = 0) -> tuple[bytes, int, JobState]:
        """Log bytes from `offset`: (data, next offset, the job's state when read)."""
        r = self._request("GET", f"/jobs/{job_id}/logs", params={"offset": offset})
        return (
            r.content,
            int(r.headers["X-Fabriek-Next-Offset"]),
            JobState(r.headers["X-Fabriek-Job-State"]),
        )

    def follow_logs(self, job_id: int, *, poll: float = 0.25) -> Iterator[bytes]:
        """Yield log bytes as they come, until the job has finished and everything was read."""
        offset = 0
        while True:
            data, offset, state = self.read_logs(job_id, offset)
            if data:
                yield data
                continue  # there may be more at once
            if state.is_final:
                return
            time.sleep(poll)

    def wait(self, job_id: int, *, poll: float = 0.25, timeout: float | None = None) -> JobOut:
        """Block until the job is in a final state and return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state.is_final:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value}")
            time.sleep(poll)

    def download_outputs(self, job_id: int, directory: str | Path) -> list[str]:
        """Unpack the job's outputs into `directory`; return the paths unpacked."""
        response = self._request("GET", f"/jobs/{job_id}/outputs")
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            # Plain files and directories only: a job may have left links in its outputs, and links
            # are how an archive escapes its directory.
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(target, members=members, filter="data")
        return sorted(m.name.removeprefix("./") for m in members if m.isfile())


def _error_of(response: httpx.Response) -> FabriekError:
    try:
        body = response.json()["error"]
        return error_from_code(body["code"], body["message"])
    except (ValueError, KeyError, TypeError):
        return FabriekError(f"the server answered {response.status_code}: {response.text[:200]}")
