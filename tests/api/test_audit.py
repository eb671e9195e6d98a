"""The audit trail on a real server with 2 API workers, on both databases (issue 21, item 11):
refused attempts leave a bounded, rate-limited trace, a storm of cancels one event, and operators
read it through `GET /audit` and `fabriek audit list`. Also the issue's job that could never
start (item 10), refused through the API."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, start_server, wait_for

API = "/api/v1"
WINDOW_S = 2


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    extra = {"FABRIEK_AUDIT_REFUSAL_WINDOW_SECONDS": str(WINDOW_S)}
    name = None
    if request.param == "postgresql":
        name, extra["FABRIEK_DATABASE_URL"] = create_pg_database(
            request.getfixturevalue("pg_server")
        )
    proc = start_server(tmp_path_factory.mktemp(f"audit-{request.param}") / "home", **extra)
    yield proc
    proc.stop()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_server"), name)


def _as(server: ServerProcess, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url + API, headers=headers, timeout=20)


def _ok(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    r = client.request(method, path, **kw)
    assert r.is_success, (method, path, r.status_code, r.text)
    return r.json()


def _user(server: ServerProcess, name: str) -> str:
    with server.http() as op:
        return str(_ok(op, "POST", "/users", json={"name": name})["token"])


def _trail(server: ServerProcess, **filters: Any) -> list[dict[str, Any]]:
    with server.http() as op:
        return list(_ok(op, "GET", "/audit", params={"limit": 1000, **filters})["events"])


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> tuple[str, int]:
    """alice's token, and a job of hers that runs (in her project of her organisation)."""
    token = _user(server, "alice")
    with _as(server, token) as http:
        _ok(http, "POST", "/organisations", json={"name": "a-org", "display_name": "A",
                                                   "kind": "university"})  # fmt: skip
        _ok(http, "POST", "/projects", json={"name": "a-proj", "organisation": "a-org"})
        job = _ok(http, "POST", "/jobs", json={"name": "long", "project": "a-proj",
                  "argv": ["sleep", "60"], "memory_bytes": 64 * 2**20, "time_limit_s": 120})  # fmt: skip
        wait_for(lambda: _ok(http, "GET", f"/jobs/{job['id']}")["state"] == "running",
                 what="alice's job to run")  # fmt: skip
    return token, int(job["id"])


def test_another_tenants_job_and_an_operators_command_leave_a_trace(
    server: ServerProcess, alice: tuple[str, int]
) -> None:
    _, job = alice
    mallory = _user(server, "mallory")
    with _as(server, mallory) as http:
        assert http.get(f"/jobs/{job}").status_code == 404
        assert http.post(f"/jobs/{job}/cancel").status_code == 404  # its transaction rolled back
        assert http.get("/users").status_code == 403
        assert http.get("/audit").status_code == 403  # the trail is the operators'
    found = wait_for(
        lambda: (
            (events := _trail(server, actor="user:mallory", action="access"))
            and len({e["action"] for e in events}) == 2
            and events
        ),
        what="mallory's refusals",
    )
    not_found = [e for e in found if e["action"] == "access.not_found"][-1]
    assert (not_found["target_type"], not_found["target_id"]) == ("job", str(job))
    assert not_found["details"]["exists"] is True  # a real job of someone else's
    assert not_found["details"]["route"] == "/api/v1/jobs/{job_id}"
    assert not_found["details"]["client"] == "127.0.0.1"
    forbidden = [e for e in found if e["action"] == "access.forbidden"]
    assert {e["details"]["route"] for e in forbidden} <= {"/api/v1/users", "/api/v1/audit"}
    # The job was not touched.
    assert not _trail(server, action="job.cancel", target_type="job", target_id=str(job))


def test_refused_tokens_are_kept_as_a_prefix_at_most(server: ServerProcess) -> None:
    ours = "fbk_" + secrets.token_urlsafe(32)
    blob = "Z" * 3000 + "~tail"
    revoked = _user(server, "rita")
    with server.http() as op:
        token_id = _ok(op, "GET", "/tokens", params={"user": "rita"})[0]["id"]
        _ok(op, "DELETE", f"/tokens/{token_id}")
    for token in (ours, blob, revoked):
        with _as(server, token) as http:
            assert http.get("/whoami").status_code == 401
    with _as(server, None) as http:
        assert http.get("/whoami").status_code == 401  # no token at all: not recorded
    events = wait_for(
        lambda: len(found := _trail(server, action="auth")) >= 1 and found,
        what="the refused tokens",
    )
    # From one address in one window: the first is written at once (per worker), the rest
    # counted into `.repeated` when the window ends.
    firsts = [e for e in events if e["action"] == "auth.token_refused"]
    assert all(e["actor"] == "client:127.0.0.1" for e in events)
    text = json.dumps(events)
    assert ours not in text and ours[8:20] not in text
    assert "ZZZZZZZZ" not in text and "~tail" not in text
    assert revoked not in text and revoked[8:20] not in text
    for e in firsts:
        assert e["details"]["token"] in (ours[:8], revoked[:8], "not a fabriek token")
        assert e["details"]["reason"] in ("unknown", "revoked")
        if e["details"]["reason"] == "revoked":
            assert e["details"]["user"] == "rita"

    def counted() -> int:
        found = _trail(server, action="auth", actor="client:127.0.0.1")
        return sum(e["details"].get("repeats", 1) for e in found)

    wait_for(lambda: counted() == 3, timeout=WINDOW_S * 10, what="all 3 refusals counted")


def test_a_storm_of_refusals_is_rate_limited_and_fully_counted(
    server: ServerProcess, alice: tuple[str, int]
) -> None:
    _, job = alice
    eve = _user(server, "eve")
    with _as(server, eve) as http:
        for _ in range(40):
            assert http.get(f"/jobs/{job}").status_code == 404

    def rows() -> list[dict[str, Any]]:
        return _trail(server, actor="user:eve", action="access.not_found")

    wait_for(
        lambda: sum(e["details"].get("repeats", 1) for e in rows()) == 40,
        timeout=WINDOW_S * 10,
        what="eve's 40 refusals counted",
    )
    found = rows()
    firsts = [e for e in found if e["action"] == "access.not_found"]
    assert 1 <= len(firsts) <= 8, found  # per worker, one per window of 2 s
    repeated = [e for e in found if e["action"] == "access.not_found.repeated"]
    assert repeated and all(e["target_id"] == str(job) for e in repeated)


def test_a_storm_of_cancels_is_one_event(server: ServerProcess, alice: tuple[str, int]) -> None:
    token, job = alice
    with _as(server, token) as http:
        for _ in range(50):
            r = http.post(f"/jobs/{job}/cancel")
            assert r.status_code in (200, 409), r.text  # 409 once it has ended
    events = _trail(server, action="job.cancel", target_type="job", target_id=str(job))
    assert [e["actor"] for e in events] == ["user:alice"]


def test_operators_page_through_the_trail_and_the_cli_lists_it(server: ServerProcess) -> None:
    with server.http() as op:
        first = _ok(op, "GET", "/audit", params={"limit": 2})
        assert len(first["events"]) == 2 and first["next_before"] == first["events"][-1]["id"]
        second = _ok(op, "GET", "/audit", params={"limit": 2, "before": first["next_before"]})
        assert second["events"][0]["id"] < first["events"][-1]["id"]
        r = op.get("/audit", params={"since": "2026-12-02T10:00:00Z",
                                     "until": "2026-12-01T10:00:00Z"})  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    listed = server.cli("audit", "list", "--action", "user", "--json")
    assert listed.returncode == 0, listed.stderr
    actions = {e["action"] for e in json.loads(listed.stdout)["events"]}
    assert actions == {"user.create"}
    table = server.cli("audit", "list", "--action", "access", "--limit", "1")
    assert table.returncode == 0 and "access." in table.stdout, table.stderr
    assert "older events: add --before" in table.stderr


def test_a_job_that_could_never_start_is_refused_with_what_would_work(
    server: ServerProcess,
) -> None:
    """The issue's case: the commercial pool's 10 % of this server's 2 GPUs is 0 GPUs."""
    token = _user(server, "carl")
    with _as(server, token) as http:
        _ok(http, "POST", "/organisations", json={"name": "c-org", "display_name": "C",
                                                   "kind": "sme"})  # fmt: skip
        _ok(http, "POST", "/projects", json={"name": "c-proj", "organisation": "c-org"})
    with server.http() as op:
        allocation = _ok(op, "POST", "/allocations", json={"project": "c-proj",
                         "pool": "commercial", "gpu_hours": 10, "days": 30})["id"]  # fmt: skip
    body = {"name": "g", "project": "c-proj", "argv": ["true"], "gpus": 1,
            "memory_bytes": 64 * 2**20, "time_limit_s": 60, "allocation": allocation}  # fmt: skip
    with _as(server, token) as http:
        r = http.post("/jobs", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "beyond_guarantee"
        assert "--preemptible" in r.json()["error"]["message"]
        assert _ok(http, "GET", f"/allocations/{allocation}")["held_gpu_hours"] == 0
        assert http.post("/jobs", json={**body, "preemptible": True}).status_code == 201
