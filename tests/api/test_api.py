"""The REST API through a real server on loopback: auth, errors with stable codes, the job flow."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile

import httpx
import pytest

from tests.helpers import ServerProcess, wait_for


def job_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "t",
        "argv": ["true"],
        "cpus": 1,
        "memory_bytes": 2**30,
        "time_limit_s": 60,
    }
    body.update(overrides)
    return body


def wait_final(http: httpx.Client, job_id: int) -> dict[str, object]:
    def final() -> dict[str, object] | None:
        job = http.get(f"/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled", "timed_out") else None

    return wait_for(final, what=f"job {job_id} to finish")


def test_health_needs_no_token(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/api/v1/health")
    assert r.status_code == 200
    assert r.json()["database"] in ("sqlite", "postgresql") and r.json()["backend"] == "local"


def test_openapi_docs_are_served(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/docs").status_code == 200
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/api/v1/jobs" in spec["paths"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer fbk_wrong"}, {"Authorization": "Basic abc"}],
    ids=["none", "wrong", "not-bearer"],
)
def test_every_endpoint_but_health_needs_a_valid_token(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    """Generated from the app's own routes: a new endpoint without authentication fails here."""
    spec = httpx.get(server.url + "/openapi.json").json()
    checked = 0
    for path, methods in spec["paths"].items():
        for method in methods:
            if path == "/api/v1/health":
                continue
            url = server.url + re.sub(
                r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith("id") else "x", path
            )
            r = httpx.request(method.upper(), url, headers=headers, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthenticated"
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (job_body(cpus=64), 422, "resources_unavailable"),
        (job_body(gpus=8), 422, "resources_unavailable"),
        (job_body(memory_bytes=2**50), 422, "resources_unavailable"),
        (job_body(cpus=-1), 422, "invalid_request"),
        (job_body(time_limit_s=0), 422, "invalid_request"),
        (job_body(argv=[]), 422, "invalid_request"),
        (job_body(cpus="many"), 422, "invalid_request"),
        (job_body(surprise=1), 422, "invalid_request"),
        (job_body(project="nope"), 404, "not_found"),
        (job_body(argv=["echo", "\ud800"]), 422, "invalid_request"),
        (job_body(name="\udcff"), 422, "invalid_request"),
        (job_body(env={"A": "\ud800"}), 422, "invalid_request"),
        (job_body(workdir="../../etc"), 422, "invalid_request"),
        (job_body(workdir="0" * 64), 404, "not_found"),
        ({"argv": ["true"]}, 422, "invalid_request"),
    ],
)
def test_bad_submissions_get_stable_codes_and_write_nothing(
    server: ServerProcess, body: dict[str, object], status: int, code: str
) -> None:
    with server.http() as http:
        before = len(http.get("/jobs", params={"limit": 10000}).json())
        # json.dumps escapes lone surrogates as \\udXXX, as a hostile client could send them.
        r = http.post(
            "/jobs", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert r.json()["error"]["message"]
        assert len(http.get("/jobs", params={"limit": 10000}).json()) == before


def test_malformed_requests_are_4xx_never_500(server: ServerProcess) -> None:
    with server.http() as http:
        assert (
            http.post(
                "/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
            ).status_code
            == 422
        )
        assert http.get("/jobs/abc").json()["error"]["code"] == "invalid_request"
        assert http.get("/jobs/999999").json()["error"]["code"] == "not_found"
        assert http.get("/jobs", params={"state": "bogus"}).status_code == 422
        assert http.get("/jobs/1/logs", params={"offset": -1}).status_code == 422
        assert http.get(f"/jobs/{2**63}").json()["error"]["code"] == "invalid_request"
        assert http.post(f"/jobs/{2**64}/cancel").json()["error"]["code"] == "invalid_request"
        assert http.get("/jobs/1/logs", params={"offset": 2**70}).status_code == 422
        assert http.get("/workdirs/..%2f..%2fetc").status_code in (404, 422)
        assert http.get("/nowhere").json()["error"]["code"] == "not_found"
        assert http.delete("/jobs").json()["error"]["code"] == "method_not_allowed"


def test_job_flow_logs_and_outputs(server: ServerProcess) -> None:
    script = "echo line1; echo line2 >&2; mkdir -p $FABRIEK_OUTPUT_DIR/sub; echo m > $FABRIEK_OUTPUT_DIR/sub/model.txt"
    with server.http() as http:
        r = http.post("/jobs", json=job_body(argv=["sh", "-c", script], name="flow"))
        assert r.status_code == 201 and r.json()["state"] == "pending"
        job = wait_final(http, r.json()["id"])
        assert job["state"] == "succeeded" and job["exit_code"] == 0
        logs = http.get(f"/jobs/{job['id']}/logs")
        assert logs.content == b"line1\n"  # stdout; stderr apart
        assert (
            logs.headers["X-Fabriek-Next-Offset"] == "6"
            and logs.headers["X-Fabriek-Job-State"] == "succeeded"
        )
        errors = http.get(f"/jobs/{job['id']}/logs", params={"stream": "stderr", "offset": 2})
        assert errors.content == b"ne2\n" and errors.headers["X-Fabriek-Next-Offset"] == "6"
        assert http.get(f"/jobs/{job['id']}/logs", params={"stream": "both"}).status_code == 422
        # Past the end, as far as an offset goes (2**62 was a 500 from seek, found in review)
        far = http.get(f"/jobs/{job['id']}/logs", params={"offset": 2**62})
        assert far.status_code == 200 and far.content == b""
        assert far.headers["X-Fabriek-Next-Offset"] == str(2**62)
        outputs = http.get(f"/jobs/{job['id']}/outputs")
        with tarfile.open(fileobj=io.BytesIO(outputs.content), mode="r:gz") as tar:
            member = tar.extractfile("./sub/model.txt")
            assert member is not None and member.read() == b"m\n"


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_workdir_upload_and_limits(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.post("/workdirs", content=_archive({"a.py": b"print(1)"}))
        assert r.status_code == 201 and r.json()["files"] == 1
        assert http.get(f"/workdirs/{r.json()['digest']}").status_code == 200
        too_big = http.post("/workdirs", content=_archive({"big.bin": b"\0" * (5 * 2**20)}))
        assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "workdir_too_large")
        evil = http.post("/workdirs", content=_archive({"../../etc/x": b"x"}))
        assert (
            evil.json()["error"]["code"] == "invalid_request"
            and "unsafe" in evil.json()["error"]["message"]
        )
        junk = http.post("/workdirs", content=b"not a tarball")
        assert junk.json()["error"]["code"] == "invalid_request"


def test_cancel_running_then_conflict(server: ServerProcess) -> None:
    with server.http() as http:
        job_id = http.post("/jobs", json=job_body(argv=["sleep", "60"])).json()["id"]
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["state"] == "running", what="running")
        assert http.post(f"/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_final(http, job_id)
        assert job["state"] == "cancelled"
        again = http.post(f"/jobs/{job_id}/cancel")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")


def test_times_without_a_zone_are_a_clear_422(server: ServerProcess) -> None:
    with server.http() as http:
        r = http.get("/usage", params={"from": "2026-11-01T00:00:00", "to": "2026-12-01T00:00:00Z"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert "timezone" in r.json()["error"]["message"]


def test_a_log_index_the_job_scribbled_on_answers_a_log_not_a_500(server: ServerProcess) -> None:
    """The log index lies in the job's own directory: a job can write nonsense into it (a
    negative size, a size past the end). `since` then finds no more than the log (were 500s,
    found in review)."""
    script = "echo one; printf '1 -5 0\\n2 999999999999999999999 0\\n' >> ../log.index; echo two"
    with server.http() as http:
        r = http.post("/jobs", json=job_body(argv=["sh", "-c", script], name="scribble"))
        job = wait_final(http, r.json()["id"])
        for since in ("1970-01-01T00:00:01.5Z", "1970-01-01T00:00:03Z"):
            logs = http.get(f"/jobs/{job['id']}/logs", params={"since": since})
            assert logs.status_code == 200, logs.text
            assert logs.content in (b"", b"one\ntwo\n", b"two\n")
