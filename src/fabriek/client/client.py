"""`fabriek.Client`: the typed Python SDK over the REST API (the CLI is built on it)."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
from fabriek.core.units import parse_duration, parse_memory
from fabriek.server.schemas import (
    AllocationOut,
    ApplicationOut,
    AuditPage,
    CallOut,
    FacilityOut,
    FactoryOut,
    Health,
    JobOut,
    Me,
    MemberOut,
    OrganisationOut,
    PoolEligibilityOut,
    PoolOut,
    ProjectOut,
    ReadingOut,
    SeriesOut,
    ShareOut,
    TokenCreated,
    TokenOut,
    UsageReportOut,
    UserCreated,
    UserOut,
    WorkdirOut,
)

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
        self.default_project = config.project  # `fabriek config set project`, FABRIEK_PROJECT
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
        # Check the server's limits here, so that the error can name the biggest files.
        health = self.health()
        packed: PackedWorkdir = pack(
            Path(directory),
            limit=health.workdir_max_bytes,
            max_entries=health.workdir_max_entries,
        )
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
        project: str | None = None,
        cpus: int = 1,
        memory: int | str | None = None,
        gpus: int = 0,
        nodes: int = 1,
        partition: str | None = None,
        time: int | str | None = None,
        env: dict[str, str] | None = None,
        workdir: str | Path | None = None,
        allocation: int | None = None,
        preemptible: bool = False,
        priority: int = 0,
        deadline: datetime | None = None,
        flexible_s: int | None = None,
        memory_bytes: int | None = None,
        time_limit_s: int | None = None,
        network: str | None = None,
    ) -> JobOut:
        """Queue a job. `workdir` is packed and uploaded; the job runs in a fresh copy of it.
        A `preemptible` job may borrow idle GPUs beyond its pool's guarantee. `cpus`, `memory`
        and `gpus` are per node: a job gets `nodes` nodes with that much each.

        `memory` is bytes or a size as the CLI takes it ("512M", "2G"; default: 2G, or less
        where the partition offers less); `time` seconds or a duration ("10m", "2h",
        "1:30:00"; default: 1 hour). `memory_bytes` and `time_limit_s` are the older names.
        Without `project`: your configured default, else your only project (docs/jobs.md).
        `network` is none, loopback or host (default: the partition's; docs/security.md)."""
        if not argv:
            raise InvalidRequest(
                "the command is empty; give it after `--`, e.g. -- python train.py"
            )
        memory_bytes = _one_of("memory", memory, "memory_bytes", memory_bytes, parse_memory)
        time_limit_s = _one_of("time", time, "time_limit_s", time_limit_s, parse_duration)
        project = project or self.default_project
        digest = self.upload_workdir(workdir) if workdir is not None else None
        body: dict[str, Any] = {
            "name": name or Path(argv[0]).name,
            "argv": argv,
            "cpus": cpus,
            "gpus": gpus,
            "nodes": nodes,
            "partition": partition,
            "env": env or {},
            "workdir": digest,
            "allocation": allocation,
            "preemptible": preemptible,
            "priority": priority,
            "deadline": deadline.isoformat() if deadline else None,
            "flexible_s": flexible_s,
        }
        # Left out, the server chooses: the project as above, memory to fit, 1 hour, the
        # partition's network.
        for key, value in (
            ("project", project),
            ("memory_bytes", memory_bytes),
            ("time_limit_s", time_limit_s),
            ("network", network),
        ):
            if value is not None:
                body[key] = value
        return JobOut.model_validate(self._request("POST", "/jobs", json=body).json())

    def jobs(
        self,
        *,
        states: list[JobState] | None = None,
        limit: int = 100,
        project: str | None = None,
        user: str | None = None,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[JobOut]:
        """Your jobs (those you may see), newest first; `name` may hold `*` wildcards, `since`
        and `until` bound the submission time."""
        params: dict[str, Any] = {"limit": limit}
        if states:
            params["state"] = [s.value for s in states]
        for key, value in (("project", project), ("user", user), ("name", name)):
            if value is not None:
                params[key] = value
        for key, moment in (("since", since), ("until", until)):
            if moment is not None:
                params[key] = moment.isoformat()
        return [
            JobOut.model_validate(j) for j in self._request("GET", "/jobs", params=params).json()
        ]

    def job(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def cancel(self, job_id: int) -> JobOut:
        return JobOut.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def read_logs(
        self,
        job_id: int,
        offset: int = 0,
        *,
        stream: str = "stdout",
        tail: int | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> tuple[bytes, int, JobState]:
        """Bytes of the job's stdout (or `stream="stderr"`) from `offset`, or from where the
        last `tail` lines or the lines written after `since` start: (data, next offset, the
        job's state when read). A job run before the streams were kept apart has both in stdout."""
        params: dict[str, Any] = {"offset": offset, "stream": stream}
        if tail is not None:
            params["tail"] = tail
        if since is not None:
            params["since"] = since.isoformat()
        if limit is not None:
            params["limit"] = limit
        r = self._request("GET", f"/jobs/{job_id}/logs", params=params)
        return (
            r.content,
            int(r.headers["X-Fabriek-Next-Offset"]),
            JobState(r.headers["X-Fabriek-Job-State"]),
        )

    def follow_logs(
        self,
        job_id: int,
        *,
        poll: float = 0.25,
        stream: str = "stdout",
        tail: int | None = None,
        since: datetime | None = None,
    ) -> Iterator[bytes]:
        """Yield the stream's bytes as they come, until the job has finished and everything
        was read."""
        for _, data in self.follow_output(
            job_id, poll=poll, streams=(stream,), tail=tail, since=since
        ):
            yield data

    def follow_output(
        self,
        job_id: int,
        *,
        poll: float = 0.25,
        streams: tuple[str, ...] = ("stdout", "stderr"),
        tail: int | None = None,
        since: datetime | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """Yield (stream, bytes) as they come from each of `streams`, until the job has
        finished and everything was read."""
        offsets: dict[str, int] = {}
        while True:
            got, final = False, True
            for stream in streams:
                if stream in offsets:
                    data, offsets[stream], state = self.read_logs(
                        job_id, offsets[stream], stream=stream
                    )
                else:  # the first read: where tail and since say
                    data, offsets[stream], state = self.read_logs(
                        job_id, stream=stream, tail=tail, since=since
                    )
                final = final and state.is_final
                if data:
                    got = True
                    yield stream, data
            if got:
                continue  # there may be more at once
            if final:
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
        """Unpack the job's outputs into `directory`; return the paths unpacked. A job that has
        not finished yet gives what it has written so far."""
        response = self._request("GET", f"/jobs/{job_id}/outputs")
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            # Plain files and directories only: a job may have left links in its outputs, and links
            # are how an archive escapes its directory.
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(target, members=members, filter="data")
        return sorted(m.name.removeprefix("./") for m in members if m.isfile())

    # --- organisations, projects, users, tokens -------------------------------------------------
    def organisations(self) -> list[OrganisationOut]:
        return [OrganisationOut.model_validate(o) for o in self._get("/organisations")]

    def organisation(self, name: str) -> OrganisationOut:
        return OrganisationOut.model_validate(self._get(f"/organisations/{_seg(name)}"))

    def create_organisation(
        self,
        name: str,
        *,
        display_name: str,
        kind: str,
        country: str | None = None,
        region: str | None = None,
    ) -> OrganisationOut:
        body = {
            "name": name,
            "display_name": display_name,
            "kind": kind,
            "country": country,
            "region": region,
        }
        return OrganisationOut.model_validate(self._send("POST", "/organisations", body))

    def update_organisation(self, name: str, **changes: Any) -> OrganisationOut:
        body = {k: v for k, v in changes.items() if v is not None}
        return OrganisationOut.model_validate(
            self._send("PATCH", f"/organisations/{_seg(name)}", body)
        )

    def verify_organisation(self, name: str, *, verified: bool = True) -> OrganisationOut:
        path = f"/organisations/{_seg(name)}/verify"
        return OrganisationOut.model_validate(self._send("POST", path, {"verified": verified}))

    def organisation_members(self, name: str) -> list[MemberOut]:
        return [
            MemberOut.model_validate(m) for m in self._get(f"/organisations/{_seg(name)}/members")
        ]

    def set_organisation_member(self, name: str, user: str, role: str = "member") -> MemberOut:
        path = f"/organisations/{_seg(name)}/members/{_seg(user)}"
        return MemberOut.model_validate(self._send("PUT", path, {"role": role}))

    def remove_organisation_member(self, name: str, user: str) -> None:
        self._request("DELETE", f"/organisations/{_seg(name)}/members/{_seg(user)}")

    def projects(self) -> list[ProjectOut]:
        return [ProjectOut.model_validate(p) for p in self._get("/projects")]

    def project(self, name: str) -> ProjectOut:
        return ProjectOut.model_validate(self._get(f"/projects/{_seg(name)}"))

    def create_project(self, name: str, *, organisation: str) -> ProjectOut:
        body = {"name": name, "organisation": organisation}
        return ProjectOut.model_validate(self._send("POST", "/projects", body))

    def update_project(self, name: str, *, network_limit: str | None = None) -> ProjectOut:
        """Operators: lock the most network the project's jobs may have (host lifts it)."""
        body = {"network_limit": network_limit} if network_limit is not None else {}
        return ProjectOut.model_validate(self._send("PATCH", f"/projects/{_seg(name)}", body))

    def project_members(self, name: str) -> list[MemberOut]:
        return [MemberOut.model_validate(m) for m in self._get(f"/projects/{_seg(name)}/members")]

    def set_project_member(self, name: str, user: str, role: str = "member") -> MemberOut:
        path = f"/projects/{_seg(name)}/members/{_seg(user)}"
        return MemberOut.model_validate(self._send("PUT", path, {"role": role}))

    def remove_project_member(self, name: str, user: str) -> None:
        self._request("DELETE", f"/projects/{_seg(name)}/members/{_seg(user)}")

    def users(self) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in self._get("/users")]

    def create_user(
        self, name: str, *, operator: bool = False, reviewer: bool = False, token_days: int = 90
    ) -> UserCreated:
        body = {
            "name": name,
            "is_operator": operator,
            "is_reviewer": reviewer,
            "token_days": token_days,
        }
        return UserCreated.model_validate(self._send("POST", "/users", body))

    def set_user_roles(
        self, name: str, *, operator: bool | None = None, reviewer: bool | None = None
    ) -> UserOut:
        body = {"is_operator": operator, "is_reviewer": reviewer}
        return UserOut.model_validate(self._send("PATCH", f"/users/{_seg(name)}", body))

    def user(self, name: str) -> UserOut:
        return UserOut.model_validate(self._get(f"/users/{_seg(name)}"))

    def token(self, token_id: int) -> TokenOut:
        return TokenOut.model_validate(self._get(f"/tokens/{token_id}"))

    def partitions(self) -> FactoryOut:
        """Each partition's nodes and what is busy now, and each pool's running and waiting
        jobs (counts only)."""
        return FactoryOut.model_validate(self._get("/partitions"))

    def tokens(self, user: str | None = None) -> list[TokenOut]:
        params = {"user": user} if user else {}
        return [TokenOut.model_validate(t) for t in self._get("/tokens", params=params)]

    def create_token(self, name: str, *, days: int = 90, user: str | None = None) -> TokenCreated:
        body: dict[str, Any] = {"name": name, "days": days}
        if user is not None:
            body["user"] = user  # operators: a token for someone else
        return TokenCreated.model_validate(self._send("POST", "/tokens", body))

    def revoke_token(self, token_id: int) -> TokenOut:
        return TokenOut.model_validate(self._request("DELETE", f"/tokens/{token_id}").json())

    def pools(self) -> list[PoolOut]:
        return [PoolOut.model_validate(p) for p in self._get("/pools")]

    def pool(self, name: str) -> PoolOut:
        return PoolOut.model_validate(self._get(f"/pools/{_seg(name)}"))

    def create_pool(self, name: str, **fields: Any) -> PoolOut:
        return PoolOut.model_validate(self._send("POST", "/pools", {"name": name, **fields}))

    def update_pool(self, name: str, **changes: Any) -> PoolOut:
        body = {k: v for k, v in changes.items() if v is not None}
        return PoolOut.model_validate(self._send("PATCH", f"/pools/{_seg(name)}", body))

    def organisation_pools(self, organisation: str) -> list[PoolEligibilityOut]:
        return [
            PoolEligibilityOut.model_validate(p)
            for p in self._get(f"/organisations/{_seg(organisation)}/pools")
        ]

    def allocations(self, project: str | None = None) -> list[AllocationOut]:
        params = {"project": project} if project else {}
        return [AllocationOut.model_validate(a) for a in self._get("/allocations", params=params)]

    def allocation(self, allocation_id: int) -> AllocationOut:
        return AllocationOut.model_validate(self._get(f"/allocations/{allocation_id}"))

    def grant_allocation(
        self,
        *,
        project: str,
        pool: str,
        gpu_hours: float,
        days: int,
        starts_at: str | None = None,
        note: str | None = None,
    ) -> AllocationOut:
        body = {
            "project": project,
            "pool": pool,
            "gpu_hours": gpu_hours,
            "days": days,
            "starts_at": starts_at,
            "note": note,
        }
        return AllocationOut.model_validate(self._send("POST", "/allocations", body))

    def calls(self) -> list[CallOut]:
        return [CallOut.model_validate(c) for c in self._get("/calls")]

    def call(self, name: str) -> CallOut:
        return CallOut.model_validate(self._get(f"/calls/{_seg(name)}"))

    def create_call(self, **fields: Any) -> CallOut:
        return CallOut.model_validate(self._send("POST", "/calls", fields))

    def apply(self, **fields: Any) -> ApplicationOut:
        return ApplicationOut.model_validate(self._send("POST", "/applications", fields))

    def applications(self, call: str | None = None) -> list[ApplicationOut]:
        params = {"call": call} if call else {}
        return [ApplicationOut.model_validate(a) for a in self._get("/applications", params=params)]

    def application(self, application_id: int) -> ApplicationOut:
        return ApplicationOut.model_validate(self._get(f"/applications/{application_id}"))

    def submit_application(self, application_id: int) -> ApplicationOut:
        return ApplicationOut.model_validate(
            self._send("POST", f"/applications/{application_id}/submit", {})
        )

    def withdraw_application(self, application_id: int) -> ApplicationOut:
        return ApplicationOut.model_validate(
            self._send("POST", f"/applications/{application_id}/withdraw", {})
        )

    def review(self, application_id: int, *, score: int, comment: str) -> ApplicationOut:
        body = {"score": score, "comment": comment}
        return ApplicationOut.model_validate(
            self._send("POST", f"/applications/{application_id}/reviews", body)
        )

    def usage(self, *, by: str, start: str, end: str) -> list[UsageReportOut]:
        params = {"by": by, "from": start, "to": end}
        return [UsageReportOut.model_validate(r) for r in self._get("/usage", params=params)]

    def share_report(self, *, start: str, end: str) -> list[ShareOut]:
        params = {"from": start, "to": end}
        return [ShareOut.model_validate(r) for r in self._get("/reports/shares", params=params)]

    # --- facility -----------------------------------------------------------------------------
    def facility(self) -> FacilityOut:
        return FacilityOut.model_validate(self._get("/facility"))

    def update_facility(self, **changes: Any) -> FacilityOut:
        body = {k: v for k, v in changes.items() if v is not None}
        return FacilityOut.model_validate(self._send("PATCH", "/facility", body))

    def load_pue(self, csv_text: str) -> FacilityOut:
        response = self._request("PUT", "/facility/pue", content=csv_text.encode(), headers=_CSV)
        return FacilityOut.model_validate(response.json())

    def load_carbon(self, csv_text: str, *, zone: str = "NL", forecast: bool = False) -> SeriesOut:
        response = self._request(
            "POST",
            "/facility/carbon",
            params={"zone": zone, "forecast": forecast},
            content=csv_text.encode(),
            headers=_CSV,
        )
        return SeriesOut.model_validate(response.json())

    def readings(self) -> list[ReadingOut]:
        return [ReadingOut.model_validate(r) for r in self._get("/facility/readings")]

    def add_reading(self, **fields: Any) -> ReadingOut:
        return ReadingOut.model_validate(self._send("POST", "/facility/readings", fields))

    def facility_report(self, *, start: str, end: str, csv: bool = False) -> Any:
        """The report rows (JSON), or the CSV text."""
        params = {"from": start, "to": end, "format": "csv" if csv else "json"}
        response = self._request("GET", "/facility/report", params=params)
        return response.text if csv else response.json()

    # --- audit --------------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Operators: a page of the audit trail, newest first. `action` matches that action
        and those below it (`job`: `job.submit`, `job.cancel`, ...); the page's `next_before`,
        passed as `before`, gives the next, older page."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (
            ("actor", actor),
            ("action", action),
            ("target_type", target_type),
            ("target_id", target_id),
            ("before", before),
        ):
            if value is not None:
                params[key] = value
        for key, moment in (("since", since), ("until", until)):
            if moment is not None:
                params[key] = moment.isoformat()
        return AuditPage.model_validate(self._get("/audit", params=params))

    def _get(self, path: str, **kwargs: Any) -> Any:
        return self._request("GET", path, **kwargs).json()

    def _send(self, method: str, path: str, body: dict[str, Any]) -> Any:
        return self._request(method, path, json=body).json()


_CSV = {"Content-Type": "text/csv"}


def _one_of(
    name: str, value: int | str | None, old_name: str, old: int | None, parse: Any
) -> int | None:
    """`value` (a number, or text for `parse`) or the same under its older name, not both."""
    if value is not None and old is not None:
        raise InvalidRequest(f"give {name} or {old_name}, not both")
    if isinstance(value, str):
        return int(parse(value))
    return value if value is not None else old


def _seg(value: str) -> str:
    """A name as one URL path segment: '/', '?', '#' and the like cannot escape it."""
    return quote(value, safe="")


def _error_of(response: httpx.Response) -> FabriekError:
    try:
        body = response.json()["error"]
        return error_from_code(body["code"], body["message"])
    except (ValueError, KeyError, TypeError):
        return FabriekError(f"the server answered {response.status_code}: {response.text[:200]}")
