"""/whoami, /partitions and one token over HTTP, on both databases: what each tells, and to whom."""

from __future__ import annotations

import itertools

import httpx

from tests.helpers import ServerProcess, wait_for

API = "/api/v1"
_unique = itertools.count()


def _as(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url + API, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _new_user(server: ServerProcess) -> tuple[str, str]:
    name = f"sys-{next(_unique)}-{server.port}"
    with server.http() as op:
        made = op.post("/users", json={"name": name})
    assert made.status_code == 201, made.text
    return name, made.json()["token"]


def test_whoami_tells_memberships_and_the_tokens_expiry(server: ServerProcess) -> None:
    with server.http() as op:
        me = op.get("/whoami").json()
    assert me["is_operator"] and me["token"]["name"] == "bootstrap"
    assert {"name": "default", "role": "owner", "organisation": None} in me["organisations"]
    assert {"name": "default", "role": "manager", "organisation": "default"} in me["projects"]
    name, token = _new_user(server)
    with _as(server, token) as user:
        me = user.get("/whoami").json()
    assert (me["name"], me["is_operator"], me["organisations"], me["projects"]) == (
        name,
        False,
        [],
        [],
    )
    assert me["token"]["name"] == "first" and me["token"]["expires_at"] is not None


def test_partitions_are_counts_anyone_may_read(server: ServerProcess) -> None:
    secret_name = f"secret-{server.port}"
    with server.http() as op:
        job = op.post(
            "/jobs",
            json={
                "name": secret_name,
                "argv": ["sleep", "30"],
                "gpus": 1,
                "memory_bytes": 64 * 2**20,
                "time_limit_s": 60,
            },
        ).json()["id"]
        wait_for(lambda: op.get(f"/jobs/{job}").json()["state"] == "running", what="the job")
    _, token = _new_user(server)
    with _as(server, token) as user:
        answer = user.get("/partitions")
    assert answer.status_code == 200
    (local,) = answer.json()["partitions"]
    assert (local["name"], local["kind"], local["gpu_type"]) == ("local", "local", "test-gpu")
    assert local["per_node"] == {"cpus": 2, "memory_bytes": 4 * 2**30, "gpus": 2}
    assert local["gpus_busy"] >= 1 and local["nodes_idle"] == 0
    assert {q["pool"] for q in answer.json()["pools"]} >= {"regional", "unallocated"}
    # Nobody's job is named to a user of no project.
    assert secret_name not in answer.text and "user" not in answer.text
    with server.http() as op:
        op.post(f"/jobs/{job}/cancel")


def test_operators_alone_make_tokens_for_someone_else(server: ServerProcess) -> None:
    name, token = _new_user(server)
    other, _ = _new_user(server)
    with _as(server, token) as user:
        refused = user.post("/tokens", json={"name": "x", "user": other})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    with server.http() as op:
        made = op.post("/tokens", json={"name": "replacement", "user": name, "days": 7})
    assert made.status_code == 201 and made.json()["user"] == name
    with _as(server, made.json()["token"]) as user:
        assert user.get("/whoami").json()["name"] == name
        shown = user.get(f"/tokens/{made.json()['id']}").json()
    assert shown["name"] == "replacement" and "token" not in shown  # never the secret again
