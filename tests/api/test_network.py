"""A job's network through the API of a real server whose partitions file sets this machine to
`loopback` (default and limit), on both databases: `network` in POST /jobs and in the job, the
partition's default, the refusals (403 network_not_allowed, nothing written), and the
operators' project lock (PATCH /projects/NAME), audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_api import job_body, wait_final
from tests.cli.test_jobs import make_member
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, start_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"network-{request.param}")
    partitions = base / "partitions.toml"
    partitions.write_text('[local]\nnetwork = "loopback"\nnetwork_limit = "loopback"\n')
    extra = {"FABRIEK_PARTITIONS_FILE": str(partitions)}
    name = None
    if request.param == "postgresql":
        admin = request.getfixturevalue("pg_server")
        name, url = create_pg_database(admin)
        extra["FABRIEK_DATABASE_URL"] = url
    proc = start_server(base / "home", **extra)
    yield proc
    proc.stop()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_server"), name)


def _as(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def _job_count(http: httpx.Client) -> int:
    return len(http.get("/jobs", params={"limit": 10000}).json())


def _error(r: httpx.Response) -> tuple[int, str, str]:
    error: dict[str, Any] = r.json()["error"]
    return r.status_code, error["code"], error["message"]


def test_the_partitions_network_is_shown(server: ServerProcess) -> None:
    with server.http() as http:
        [local] = http.get("/partitions").json()["partitions"]
    assert (local["name"], local["network"], local["network_limit"]) == (
        "local",
        "loopback",
        "loopback",
    )


def test_a_job_gets_what_it_asked_for_or_the_partitions_default(server: ServerProcess) -> None:
    with server.http() as http:
        asked = http.post("/jobs", json=job_body(network="none"))
        assert asked.status_code == 201, asked.text
        assert asked.json()["network"] == "none"
        default = http.post("/jobs", json=job_body())
        assert default.status_code == 201 and default.json()["network"] is None
        done = [wait_final(http, r.json()["id"]) for r in (asked, default)]
    assert [(j["state"], j["network"]) for j in done] == [
        ("succeeded", "none"),
        ("succeeded", "loopback"),  # decided when it started: the partition's default
    ]


def test_more_than_the_partition_allows_is_refused_and_nothing_written(
    server: ServerProcess,
) -> None:
    with server.http() as http:
        before = _job_count(http)
        refused = http.post("/jobs", json=job_body(network="host"))
        wrong = http.post("/jobs", json=job_body(network="internet"))
        after = _job_count(http)
    assert _error(refused) == (
        403,
        "network_not_allowed",
        "no partition offers network host (they offer: local none or loopback); ask for one "
        "they offer",
    )
    status, code, message = _error(wrong)
    assert (status, code) == (422, "invalid_request") and message.startswith(
        "invalid request: network:"
    )
    assert "'none', 'loopback' or 'host'" in message
    assert after == before


def test_operators_lock_a_project_and_its_members_are_held_to_it(server: ServerProcess) -> None:
    vera = make_member(server, "vera", "vision")
    with _as(server, vera["FABRIEK_TOKEN"]) as member, server.http() as operator:
        assert member.get("/projects/vision").json()["network_limit"] is None
        # Members, and managers of the project, may not lock it.
        assert _error(member.patch("/projects/vision", json={"network_limit": "none"}))[:2] == (
            403,
            "forbidden",
        )
        locked = operator.patch("/projects/vision", json={"network_limit": "none"})
        assert locked.status_code == 200, locked.text
        assert locked.json()["network_limit"] == "none"
        assert member.get("/projects/vision").json()["network_limit"] == "none"
        before = _job_count(operator)
        refused = member.post("/jobs", json=job_body(project="vision", network="loopback"))
        assert _error(refused) == (
            403,
            "network_not_allowed",
            "project 'vision' is locked to network none by an operator, and the job asks for "
            "loopback: ask for none (--network none) or less",
        )
        assert _job_count(operator) == before
        # Asking for nothing: the partition's default, lowered to the lock.
        job = member.post("/jobs", json=job_body(project="vision"))
        assert job.status_code == 201, job.text
        assert wait_final(member, job.json()["id"])["network"] == "none"
        lifted = operator.patch("/projects/vision", json={"network_limit": "host"})
        assert lifted.json()["network_limit"] is None
        unchanged = operator.patch("/projects/vision", json={})
        assert unchanged.status_code == 200 and unchanged.json()["network_limit"] is None
        bad = operator.patch("/projects/vision", json={"network_limit": "web"})
        assert _error(bad)[:2] == (422, "invalid_request")
        trail = operator.get(
            "/audit", params={"action": "project.network_limit", "limit": 100}
        ).json()["events"]
    assert [(e["details"]["network_limit"], e["details"]["previous"]) for e in trail] == [
        (None, "none"),
        ("none", None),
    ]
