"""Tenant isolation: every API endpoint against every role and a foreign tenant.

The endpoints come from the running server's own OpenAPI document, so an endpoint added without a
rule here fails `test_every_endpoint_has_a_rule`. Each rule says how to call the endpoint on
tenant A's objects and which status each role must get; list endpoints also say who must see A's
object in the answer.

Tenant A: organisation `org-a` (owner, manager, member) with project `pa` (project member) and a
finished job and a workdir of the project member. Tenant B: `org-b`, whose owner is the foreign
user. The operator is the bootstrap administrator.
"""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, wait_for

ROLES = (
    "anonymous",
    "operator",
    "owner",
    "manager",
    "member",
    "project_member",
    "foreign",
    "reviewer",
)
API = "/api/v1"
_unique = itertools.count()


@dataclass
class Tenants:
    server: ServerProcess
    tokens: dict[str, str]
    job: int = 0
    workdir: str = ""
    allocation: int = 0
    application: int = 0
    names: dict[str, str] = field(default_factory=dict)  # role -> user name

    def http(self, role: str) -> httpx.Client:
        headers = {} if role == "anonymous" else {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.Client(base_url=self.server.url + API, headers=headers, timeout=20)

    def call(self, role: str, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.http(role) as http:
            return http.request(method, path, **kw)

    def ok(self, role: str, method: str, path: str, **kw: Any) -> Any:
        r = self.call(role, method, path, **kw)
        assert r.is_success, (method, path, r.status_code, r.text)
        return r.json() if r.content else None


def _archive() -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        data = f"print({next(_unique)})\n".encode()
        info = tarfile.TarInfo("run.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tenants(server: ServerProcess) -> Iterator[Tenants]:
    t = Tenants(server, {"operator": server.token})
    op = "operator"
    suffix = server.home.parent.name[-6:].replace("-", "")  # users are per server, names too
    for role in (
        "owner",
        "manager",
        "member",
        "project_member",
        "foreign",
        "spare",
        "spare2",
        "reviewer",
    ):
        name = f"{role.replace('_', '-')}-{suffix}"
        t.names[role] = name
        body = {"name": name, "is_reviewer": role == "reviewer"}
        t.tokens[role] = t.ok(op, "POST", "/users", json=body)["token"]
    org = {"display_name": "Org", "kind": "university", "country": "NL", "region": "NL11"}
    t.ok("owner", "POST", "/organisations", json={"name": "org-a", **org})
    t.ok("foreign", "POST", "/organisations", json={"name": "org-b", **org})
    for role, org_role in (
        ("manager", "manager"),
        ("member", "member"),
        ("project_member", "member"),
        ("spare2", "member"),
    ):
        t.ok(
            "owner", "PUT", f"/organisations/org-a/members/{t.names[role]}", json={"role": org_role}
        )
    t.ok("owner", "POST", "/projects", json={"name": "pa", "organisation": "org-a"})
    t.ok("foreign", "POST", "/projects", json={"name": "pb", "organisation": "org-b"})
    t.ok(
        "owner", "PUT", f"/projects/pa/members/{t.names['project_member']}", json={"role": "member"}
    )
    grant = {"project": "pa", "pool": "commercial", "gpu_hours": 100, "days": 30}
    t.allocation = t.ok(op, "POST", "/allocations", json=grant)["id"]
    for name, mode in (("c-a", "fast_lane"), ("c-big", "large_scale")):
        call = {
            "name": name,
            "title": name,
            "pool": "commercial",
            "mode": mode,
            "opens_at": "2020-01-01T00:00:00Z",
            "closes_at": "2100-01-01T00:00:00Z",
            "total_gpu_hours": 100000,
            "max_gpu_hours": 10,
        }
        t.ok(op, "POST", "/calls", json=call)
    t.application = t.ok("owner", "POST", "/applications", json=_application_body("c-a"))["id"]
    t.workdir = t.ok(
        "project_member",
        "POST",
        "/workdirs",
        content=_archive(),
        headers={"Content-Type": "application/gzip"},
    )["digest"]
    body = {
        "name": "a",
        "project": "pa",
        "argv": ["true"],
        "memory_bytes": 64 * 2**20,
        "time_limit_s": 60,
    }
    t.job = t.ok("project_member", "POST", "/jobs", json=body)["id"]
    wait_for(
        lambda: t.ok(op, "GET", f"/jobs/{t.job}")["state"] == "succeeded", what="tenant A's job"
    )
    yield t
    for job in t.ok(op, "GET", "/jobs", params={"state": ["pending", "admitted", "running"]}):
        t.call(op, "POST", f"/jobs/{job['id']}/cancel")


# --- the rules ----------------------------------------------------------------------------------
Request = tuple[str, dict[str, Any]]  # path under /api/v1 with its ids filled in, httpx kwargs
Build = Callable[[Tenants, str], Request]


@dataclass(frozen=True)
class Rule:
    build: Build
    expect: dict[str, int]
    # For list endpoints: the roles that must find tenant A's object in the answer; the others
    # must not.
    sees: tuple[str, ...] | None = None
    finds: Callable[[Tenants, Any], bool] | None = None


def expect(default: int, **by_role: int) -> dict[str, int]:
    """Statuses by role. The reviewer, a user of no organisation, gets what the foreign user
    gets unless said otherwise."""
    statuses = {role: default for role in ROLES}
    statuses["anonymous"] = 401
    statuses.update(by_role)
    statuses["reviewer"] = by_role.get("reviewer", statuses["foreign"])
    return statuses


def fixed(path: str, **kw: Any) -> Build:
    return lambda t, role: (path, kw)


def _job_body(t: Tenants, role: str) -> Request:
    return "/jobs", {
        "json": {
            "name": "m",
            "project": "pa",
            "argv": ["true"],
            "memory_bytes": 64 * 2**20,
            "time_limit_s": 60,
        }
    }


def _fresh_job(t: Tenants, role: str) -> Request:
    body = {
        "name": f"c-{role}",
        "project": "pa",
        "argv": ["sleep", "30"],
        "memory_bytes": 64 * 2**20,
        "time_limit_s": 60,
    }
    job = t.ok("project_member", "POST", "/jobs", json=body)["id"]
    return f"/jobs/{job}/cancel", {}


def _victim_in_org(t: Tenants, role: str) -> Request:
    name = f"victim-{next(_unique)}-{role.replace('_', '-')}"
    t.ok("operator", "POST", "/users", json={"name": name})
    t.ok("operator", "PUT", f"/organisations/org-a/members/{name}", json={"role": "member"})
    return f"/organisations/org-a/members/{name}", {}


def _victim_in_project(t: Tenants, role: str) -> Request:
    path, _ = _victim_in_org(t, role)
    name = path.rsplit("/", 1)[1]
    t.ok("operator", "PUT", f"/projects/pa/members/{name}", json={"role": "member"})
    return f"/projects/pa/members/{name}", {}


def _token_of_project_member(t: Tenants, role: str) -> Request:
    token = t.ok("project_member", "POST", "/tokens", json={"name": f"for-{role}"})
    return f"/tokens/{token['id']}", {}


def _new_org(t: Tenants, role: str) -> Request:
    body = {"name": f"new-{next(_unique)}", "display_name": "New", "kind": "sme"}
    return "/organisations", {"json": body}


def _new_project(t: Tenants, role: str) -> Request:
    return "/projects", {"json": {"name": f"p-{next(_unique)}", "organisation": "org-a"}}


def _new_user(t: Tenants, role: str) -> Request:
    return "/users", {"json": {"name": f"u-{next(_unique)}"}}


def _application_body(call: str, submit: bool = True) -> dict[str, Any]:
    return {"call": call, "project": "pa", "gpu_hours": 1, "title": "t", "submit": submit}


def _new_call(t: Tenants, role: str) -> Request:
    body = {
        "name": f"call-{next(_unique)}",
        "title": "T",
        "pool": "commercial",
        "mode": "playground",
        "opens_at": "2020-01-01T00:00:00Z",
        "closes_at": "2100-01-01T00:00:00Z",
        "total_gpu_hours": 10,
        "max_gpu_hours": 1,
    }
    return "/calls", {"json": body}


def _draft(action: str) -> Build:
    def build(t: Tenants, role: str) -> Request:
        draft = t.ok("owner", "POST", "/applications", json=_application_body("c-a", submit=False))
        return f"/applications/{draft['id']}/{action}", {}

    return build


def _submitted_for_review(t: Tenants, role: str) -> Request:
    app = t.ok("owner", "POST", "/applications", json=_application_body("c-big"))
    return f"/applications/{app['id']}/reviews", {"json": {"score": 4, "comment": "fine"}}


def _new_pool(t: Tenants, role: str) -> Request:
    # A zero guarantee, so that any number of them fits within 100 %.
    body = {"name": f"pool-{next(_unique)}", "display_name": "P", "guarantee": 0.0}
    return "/pools", {"json": body}


def _upload(t: Tenants, role: str) -> Request:
    return "/workdirs", {"content": _archive(), "headers": {"Content-Type": "application/gzip"}}


_CSV = {"Content-Type": "text/csv"}


def _new_reading(t: Tenants, role: str) -> Request:
    day = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=next(_unique))  # periods never overlap
    body = {
        "starts_at": day.isoformat(),
        "ends_at": (day + timedelta(days=1)).isoformat(),
        "total_kwh": 1200,
        "it_kwh": 1000,
        "water_m3": 2,
    }
    return "/facility/readings", {"json": body}


A_SEERS = ("operator", "owner", "manager", "project_member")  # see project pa and its jobs
ORG_SEERS = ("operator", "owner", "manager", "member", "project_member")

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule(fixed("/health"), expect(200, anonymous=200)),
    ("GET", "/whoami"): Rule(fixed("/whoami"), expect(200)),
    # the factory now: counts only, for everyone signed in
    ("GET", "/partitions"): Rule(fixed("/partitions"), expect(200)),
    # jobs
    ("POST", "/jobs"): Rule(
        _job_body,
        # The owner created pa and so manages it; the organisation's manager is not in it.
        expect(404, operator=201, project_member=201, owner=201, manager=403),
    ),
    ("GET", "/jobs"): Rule(
        fixed("/jobs"),
        expect(200),
        sees=A_SEERS,
        finds=lambda t, body: any(j["id"] == t.job for j in body),
    ),
    ("GET", "/jobs/{job_id}"): Rule(
        lambda t, r: (f"/jobs/{t.job}", {}), expect(404, **dict.fromkeys(A_SEERS, 200))
    ),
    ("POST", "/jobs/{job_id}/cancel"): Rule(_fresh_job, expect(404, **dict.fromkeys(A_SEERS, 200))),
    ("GET", "/jobs/{job_id}/logs"): Rule(
        lambda t, r: (f"/jobs/{t.job}/logs", {}), expect(404, **dict.fromkeys(A_SEERS, 200))
    ),
    ("GET", "/jobs/{job_id}/outputs"): Rule(
        lambda t, r: (f"/jobs/{t.job}/outputs", {}), expect(404, **dict.fromkeys(A_SEERS, 200))
    ),
    # workdirs: private to whoever uploaded them, operators included
    ("POST", "/workdirs"): Rule(_upload, expect(201)),
    ("GET", "/workdirs/{digest}"): Rule(
        lambda t, r: (f"/workdirs/{t.workdir}", {}), expect(404, project_member=200)
    ),
    # organisations
    ("POST", "/organisations"): Rule(_new_org, expect(201)),
    ("GET", "/organisations"): Rule(
        fixed("/organisations"),
        expect(200),
        sees=ORG_SEERS,
        finds=lambda t, body: any(o["name"] == "org-a" for o in body),
    ),
    ("GET", "/organisations/{org}"): Rule(
        fixed("/organisations/org-a"), expect(404, **dict.fromkeys(ORG_SEERS, 200))
    ),
    ("PATCH", "/organisations/{org}"): Rule(
        fixed("/organisations/org-a", json={"display_name": "Org"}),
        expect(403, operator=200, owner=200, foreign=404),
    ),
    ("POST", "/organisations/{org}/verify"): Rule(
        fixed("/organisations/org-a/verify", json={"verified": True}),
        expect(403, operator=200, foreign=404),
    ),
    ("GET", "/organisations/{org}/members"): Rule(
        fixed("/organisations/org-a/members"), expect(404, **dict.fromkeys(ORG_SEERS, 200))
    ),
    ("PUT", "/organisations/{org}/members/{user}"): Rule(
        lambda t, r: (
            f"/organisations/org-a/members/{t.names['spare']}",
            {"json": {"role": "member"}},
        ),
        expect(403, operator=200, owner=200, manager=200, foreign=404),
    ),
    ("DELETE", "/organisations/{org}/members/{user}"): Rule(
        _victim_in_org, expect(403, operator=204, owner=204, manager=204, foreign=404)
    ),
    # projects
    ("POST", "/projects"): Rule(
        _new_project, expect(403, operator=201, owner=201, manager=201, foreign=404)
    ),
    ("GET", "/projects"): Rule(
        fixed("/projects"),
        expect(200),
        sees=A_SEERS,
        finds=lambda t, body: any(p["name"] == "pa" for p in body),
    ),
    ("GET", "/projects/{project}"): Rule(
        fixed("/projects/pa"), expect(404, **dict.fromkeys(A_SEERS, 200))
    ),
    ("PATCH", "/projects/{project}"): Rule(  # the network lock: operators only
        fixed("/projects/pa", json={"network_limit": "host"}),
        expect(404, operator=200, owner=403, manager=403, project_member=403),
    ),
    ("GET", "/projects/{project}/members"): Rule(
        fixed("/projects/pa/members"), expect(404, **dict.fromkeys(A_SEERS, 200))
    ),
    ("PUT", "/projects/{project}/members/{user}"): Rule(
        lambda t, r: (f"/projects/pa/members/{t.names['spare2']}", {"json": {"role": "member"}}),
        expect(404, operator=200, owner=200, manager=200, project_member=403),
    ),
    ("DELETE", "/projects/{project}/members/{user}"): Rule(
        _victim_in_project, expect(404, operator=204, owner=204, manager=204, project_member=403)
    ),
    # users: operators manage them; everyone may look at themselves
    ("POST", "/users"): Rule(_new_user, expect(403, operator=201)),
    ("GET", "/users"): Rule(fixed("/users"), expect(403, operator=200)),
    ("GET", "/audit"): Rule(fixed("/audit"), expect(403, operator=200)),
    ("GET", "/users/{user}"): Rule(
        lambda t, r: (f"/users/{t.names['project_member']}", {}),
        expect(403, operator=200, project_member=200),
    ),
    ("PATCH", "/users/{user}"): Rule(
        lambda t, r: (f"/users/{t.names['spare']}", {"json": {"is_reviewer": False}}),
        expect(403, operator=200),
    ),
    # pools: public to everyone signed in, changed by operators
    ("GET", "/pools"): Rule(fixed("/pools"), expect(200)),
    ("GET", "/pools/{pool}"): Rule(fixed("/pools/regional"), expect(200)),
    ("POST", "/pools"): Rule(_new_pool, expect(403, operator=201)),
    ("PATCH", "/pools/{pool}"): Rule(
        fixed("/pools/commercial", json={"display_name": "Commercial use"}),
        expect(403, operator=200),
    ),
    ("GET", "/organisations/{org}/pools"): Rule(
        fixed("/organisations/org-a/pools"), expect(404, **dict.fromkeys(ORG_SEERS, 200))
    ),
    # allocations: granted by operators, seen with their project
    ("POST", "/allocations"): Rule(
        fixed(
            "/allocations", json={"project": "pa", "pool": "commercial", "gpu_hours": 1, "days": 1}
        ),
        expect(403, operator=201),
    ),
    ("GET", "/allocations"): Rule(
        fixed("/allocations"),
        expect(200),
        sees=A_SEERS,
        finds=lambda t, body: any(a["id"] == t.allocation for a in body),
    ),
    ("GET", "/allocations/{allocation_id}"): Rule(
        lambda t, r: (f"/allocations/{t.allocation}", {}),
        expect(404, **dict.fromkeys(A_SEERS, 200)),
    ),
    # access calls: public; applications: the project's managers apply, reviewers review
    ("POST", "/calls"): Rule(_new_call, expect(403, operator=201)),
    ("GET", "/calls"): Rule(fixed("/calls"), expect(200)),
    ("GET", "/calls/{call}"): Rule(fixed("/calls/c-a"), expect(200)),
    ("POST", "/applications"): Rule(
        lambda t, r: ("/applications", {"json": _application_body("c-a", submit=False)}),
        expect(404, operator=201, owner=201, manager=201, project_member=403),
    ),
    ("GET", "/applications"): Rule(
        fixed("/applications"),
        expect(200),
        sees=(*A_SEERS, "reviewer"),
        finds=lambda t, body: any(a["id"] == t.application for a in body),
    ),
    ("GET", "/applications/{application_id}"): Rule(
        lambda t, r: (f"/applications/{t.application}", {}),
        expect(404, reviewer=200, **dict.fromkeys(A_SEERS, 200)),
    ),
    ("POST", "/applications/{application_id}/submit"): Rule(
        _draft("submit"), expect(404, operator=200, owner=200, manager=200, project_member=403)
    ),
    ("POST", "/applications/{application_id}/withdraw"): Rule(
        _draft("withdraw"), expect(404, operator=200, owner=200, manager=200, project_member=403)
    ),
    ("POST", "/applications/{application_id}/reviews"): Rule(
        _submitted_for_review, expect(403, reviewer=201)
    ),
    # reports: usage of what one sees (project pa's job for A's seers); shares for operators
    ("GET", "/usage"): Rule(
        fixed(
            "/usage",
            params={"by": "project", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        ),
        expect(200),
        sees=A_SEERS,
        finds=lambda t, body: any(r["key"] == "pa" for r in body),
    ),
    ("GET", "/reports/shares"): Rule(
        fixed(
            "/reports/shares", params={"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
        ),
        expect(403, operator=200),
    ),
    # the facility: its model is read by everyone signed in; operators change it and report
    ("GET", "/facility"): Rule(fixed("/facility"), expect(200)),
    ("PATCH", "/facility"): Rule(fixed("/facility", json={"pue": 1.2}), expect(403, operator=200)),
    ("PUT", "/facility/pue"): Rule(
        fixed("/facility/pue", content=b"from,pue\n2026-01-01,1.2\n", headers=_CSV),
        expect(403, operator=200),
    ),
    ("POST", "/facility/carbon"): Rule(
        fixed(
            "/facility/carbon",
            content=b"hour,direct_g_per_kwh,life_cycle_g_per_kwh\n2030-01-01T00:00Z,100,120\n",
            headers=_CSV,
        ),
        expect(403, operator=201),
    ),
    ("GET", "/facility/readings"): Rule(fixed("/facility/readings"), expect(403, operator=200)),
    ("POST", "/facility/readings"): Rule(_new_reading, expect(403, operator=201)),
    ("GET", "/facility/report"): Rule(
        fixed(
            "/facility/report",
            params={"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        ),
        expect(403, operator=200),
    ),
    # tokens: personal
    ("POST", "/tokens"): Rule(fixed("/tokens", json={"name": "t"}), expect(201)),
    ("GET", "/tokens"): Rule(fixed("/tokens"), expect(200)),
    ("GET", "/tokens/{token_id}"): Rule(
        _token_of_project_member, expect(404, operator=200, project_member=200)
    ),
    ("DELETE", "/tokens/{token_id}"): Rule(
        _token_of_project_member, expect(404, operator=200, project_member=200)
    ),
}


def _routes(server: ServerProcess) -> list[tuple[str, str]]:
    spec = httpx.get(server.url + "/openapi.json").json()
    return sorted(
        (method.upper(), path.removeprefix(API))
        for path, methods in spec["paths"].items()
        for method in methods
    )


def test_every_endpoint_has_a_rule(server: ServerProcess) -> None:
    missing = [route for route in _routes(server) if route not in RULES]
    assert not missing, f"endpoints without an isolation rule: {missing}"
    stale = [route for route in RULES if route not in _routes(server)]
    assert not stale, f"rules for endpoints that do not exist: {stale}"


@pytest.mark.parametrize("route", sorted(RULES), ids=lambda r: f"{r[0]} {r[1]}")
def test_each_role_gets_its_answer(tenants: Tenants, route: tuple[str, str]) -> None:
    method, _ = route
    rule = RULES[route]
    got: dict[str, int] = {}
    for role in ROLES:
        path, kw = rule.build(tenants, role)
        response = tenants.call(role, method, path, **kw)
        got[role] = response.status_code
        if response.status_code >= 400:  # refusals carry a stable code, never a 500
            assert response.json()["error"]["code"] in (
                "unauthenticated",
                "forbidden",
                "not_found",
            ), (role, response.text)
        if rule.sees is not None and response.status_code == 200:
            assert rule.finds is not None
            assert rule.finds(tenants, response.json()) == (role in rule.sees), (role, route)
    assert got == rule.expect
