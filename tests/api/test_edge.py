"""Hostile input at the API's edge, on both databases: ids beyond 32 bits, control characters in
URLs and JSON, oversized bodies, lax types. Each answers one clear 4xx and changes nothing."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.helpers import ServerProcess

BIG = 2**31  # one past PostgreSQL's integer; SQLite would have looked it up


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/jobs/{BIG}", None),
        ("POST", f"/jobs/{BIG}/cancel", None),
        ("GET", f"/jobs/{BIG}/logs", None),
        ("GET", f"/jobs/{BIG}/outputs", None),
        ("GET", f"/allocations/{BIG}", None),
        ("GET", f"/applications/{BIG}", None),
        ("POST", f"/applications/{BIG}/submit", None),
        ("POST", f"/applications/{BIG}/withdraw", None),
        ("GET", f"/tokens/{BIG}", None),
        ("DELETE", f"/tokens/{BIG}", None),
        ("POST", "/jobs", {"name": "t", "argv": ["true"], "allocation": BIG}),
    ],
)
def test_ids_beyond_32_bits_are_one_422_on_both_databases(
    server: ServerProcess, method: str, path: str, body: dict[str, object] | None
) -> None:
    with server.http() as http:
        r = http.request(method, path, json=body)
        assert _code(r) == (422, "invalid_request"), r.text
        assert "2147483647" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/organisations/a%00b", None),
        ("GET", "/projects/a%1bb", None),
        ("GET", "/tokens", {"user": "a\x00b"}),
        ("GET", "/allocations", {"project": "a\x00b"}),
        ("GET", "/jobs", {"user": "a\x07b"}),
        ("GET", "/users/x%7f", None),
    ],
)
def test_control_characters_in_urls_are_refused_at_the_edge(
    server: ServerProcess, method: str, path: str, params: dict[str, str] | None
) -> None:
    with server.http() as http:
        r = http.request(method, path, params=params)
        assert _code(r) == (422, "invalid_request"), r.text
        assert "control character" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/applications", {"call": "c", "project": "default", "gpu_hours": 1, "title": "a\x00b"}),
        ("/allocations", {"project": "default", "pool": "p", "gpu_hours": 1, "days": 1, "note": "\x00"}),
        ("/jobs", {"name": "t", "argv": ["true", "a\x00b"]}),
        ("/jobs", {"name": "t", "argv": ["true"], "env": {"A": "\x00"}}),
        ("/organisations", {"name": "x", "display_name": "X\x00", "kind": "sme"}),
    ],
)  # fmt: skip
def test_nul_in_json_strings_is_a_422_and_writes_nothing(
    server: ServerProcess, path: str, body: dict[str, object]
) -> None:
    with server.http() as http:
        before = http.get("/jobs", params={"limit": 10000}).json()
        r = http.post(path, json=body)
        assert _code(r) == (422, "invalid_request"), r.text
        assert "NUL" in r.json()["error"]["message"]
        assert http.get("/jobs", params={"limit": 10000}).json() == before


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: ServerProcess) -> None:
    # Item 4 of the hardening issue: one 60 MiB environment value grew the worker by 466 MB.
    value = "x" * (60 * 2**20)
    with server.http() as http:
        r = http.post("/jobs", json={"name": "t", "argv": ["true"], "env": {"BIG": value}})
        assert _code(r) == (413, "too_large"), r.text
        assert "2,097,152 bytes" in r.json()["error"]["message"]
    # The same without a Content-Length (chunked): counted as it arrives, refused at the limit.
    with server.http() as http:
        chunks = (b"x" * 65536 for _ in range(100))  # 6.25 MiB
        r = http.post("/jobs", content=chunks, headers={"Content-Type": "application/json"})
        assert _code(r) == (413, "too_large"), r.text


def test_a_body_declaring_more_than_the_limit_is_answered_unread(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + server.token.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        answer = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"too_large"' in answer


def test_argv_and_env_are_bounded_near_what_exec_accepts(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.post("/jobs", json={"name": "t", "argv": ["true", "a" * 131_072]})
        assert _code(r) == (422, "invalid_request")
        r = http.post("/jobs", json={"name": "t", "argv": ["true"] + ["a" * 100_000] * 11})
        assert _code(r) == (422, "invalid_request")
        assert "beyond the limit of 1,048,576" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", {"name": "t", "argv": ["true"], "preemptible": 0}, "preemptible"),
        ("/jobs", {"name": "t", "argv": ["true"], "cpus": True}, "cpus"),
        ("/jobs", {"name": "t", "argv": ["true"], "cpus": "1"}, "cpus"),
        ("/jobs", {"name": "t", "argv": ["true"], "time_limit_s": 60.5}, "time_limit_s"),
        ("/jobs", {"name": "t", "argv": ["true"], "deadline": 1e9}, "deadline"),
        ("/jobs", {"name": "t", "argv": ["true"], "deadline": "2030-01-01"}, "deadline"),
        ("/users", {"name": "u", "is_operator": "yes"}, "is_operator"),
    ],
)
def test_lax_values_are_refused_where_the_schema_says_otherwise(
    server: ServerProcess, path: str, body: dict[str, object], field: str
) -> None:
    with server.http() as http:
        r = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert _code(r) == (422, "invalid_request"), r.text
        assert field in r.json()["error"]["message"]


def test_a_facility_pue_false_is_not_a_number(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.patch("/facility", json={"water_offsite": False})
        assert _code(r) == (422, "invalid_request"), r.text


@pytest.mark.parametrize("until", ["0.5", "1700000000", "2026-12-07"])
def test_times_in_queries_must_be_date_times(server: ServerProcess, until: str) -> None:
    with server.http() as http:
        r = http.get("/jobs", params={"until": until})
        assert _code(r) == (422, "invalid_request"), r.text
        assert "RFC 3339" in r.json()["error"]["message"]


def test_a_405_names_the_methods_allowed(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.request("TRACE", "/workdirs/" + "0" * 64)
        assert _code(r) == (405, "method_not_allowed")
        assert r.headers["allow"] == "GET"
        assert set(http.delete("/jobs").headers["allow"].split(", ")) == {"GET", "POST"}


# --- found by a hostile review of the above -----------------------------------------------------
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_numbers_beyond_floats_are_refused_not_stored(server: ServerProcess, value: str) -> None:
    # Python's JSON parser takes them: PostgreSQL's json column then refused the audit row (a
    # 500) and SQLite stored null, which broke every later listing of the row.
    body = '{"call": "c", "project": "default", "gpu_hours": %s, "title": "t", "submit": false}'
    with server.http() as http:
        r = http.post(
            "/applications", content=body % value, headers={"Content-Type": "application/json"}
        )
        assert _code(r) == (422, "invalid_request"), r.text
        assert "gpu_hours" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/usage", {"from": "0001-01-01T00:00:00+01:00", "to": "2026-12-01T00:00:00Z"}),
        ("/usage", {"from": "2026-11-01T00:00:00Z", "to": "9999-12-31T23:59:59-14:00"}),
        ("/reports/shares", {"from": "0001-01-01T00:00:00+01:00", "to": "2026-12-01T00:00:00Z"}),
        ("/jobs", {"since": "0001-01-01T00:00:00+01:00"}),
    ],
)
def test_times_with_no_utc_equivalent_are_a_422(
    server: ServerProcess, path: str, params: dict[str, str]
) -> None:
    with server.http() as http:
        r = http.get(path, params=params)
        assert _code(r) == (422, "invalid_request"), r.text
        assert "years 1 and 9999" in r.json()["error"]["message"]


def test_a_listing_of_huge_jobs_stops_at_its_byte_bound(server: ServerProcess) -> None:
    # Each job's command may be a MiB (what exec takes): 30 of them would be a 30 MB answer.
    from fabriek.server.routers.jobs import MAX_LIST_BYTES

    argv = ["sleep", "0", *(["a" * 120_000] * 8)]
    with server.http() as http:
        for _ in range(MAX_LIST_BYTES // (8 * 120_000) + 2):
            r = http.post("/jobs", json={"name": "big", "argv": argv, "time_limit_s": 60})
            assert r.status_code == 201, r.text
        r = http.get("/jobs", params={"name": "big", "limit": 10000})
        assert r.status_code == 200
        assert len(r.content) <= MAX_LIST_BYTES
        assert r.headers["x-fabriek-more"] == "true"
        assert all(job["name"] == "big" for job in r.json())


def test_a_body_that_does_not_arrive_in_time_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.helpers import start_server

    server = start_server(
        tmp_path_factory.mktemp("slow") / "home", FABRIEK_REQUEST_BODY_SECONDS="1"
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + server.token.encode() + b"\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"timeout"' in answer
    finally:
        server.stop()
