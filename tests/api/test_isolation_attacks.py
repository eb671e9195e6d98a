"""The attack suite through a real server, on each database (issue 22, "The attack suite").

`fabriek up` runs as root with a canary in its environment; tenant A (alice, project `pa`) has a
job running, and tenant B (mallory, project `pb`) submits jobs that try, as an attacker would,
to read the server's home (the SQLite database, uploaded workdirs), the client config with the
administrator's token and A's files; to see and kill A's job and the server's processes; to
read the server's environment; and, without the network, to reach the API's port and
PostgreSQL. Each try reports the errno's name (tests/backends/local/test_attacks.py has the
toolkit and the same tries against the backend alone); the tests assert it, and check from
outside that what B aimed at is there and unharmed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabriek.server.services.workdirs import archive_path
from tests.api.test_api import job_body, wait_final
from tests.archives import file_entry, make_archive
from tests.backends.local.test_attacks import (
    CONNECT,
    PRELUDE,
    PY,
    READ_ENV,
    SEE_AND_KILL,
    VICTIM,
    Job,
    children_of,
    host_pids,
    sandbox_processes,
    sleeping,
    status_of,
    targets_env,
    unique_duration,
)
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, start_server, wait_for

API = "/api/v1"
CANARY_VAR = "SERVER_SECRET_CANARY"  # as a secret in the server's environment would be
CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server run as root (jobs sandboxed as their projects), a canary among its
    environment's variables."""
    extra = {CANARY_VAR: CANARY}
    name = None
    if request.param == "postgresql":
        name, extra["FABRIEK_DATABASE_URL"] = create_pg_database(
            request.getfixturevalue("pg_server")
        )
    proc = start_server(tmp_path_factory.mktemp(f"attacks-{request.param}") / "home", **extra)
    yield proc
    proc.stop()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_server"), name)


@dataclass
class Running:
    """A job of tenant A's, running until released, with the workdir A uploaded."""

    id: int
    token: str
    child: str  # its child's `sleep` argument
    dir: Path
    workdir: str  # the upload's digest


@dataclass
class Tenants:
    server: ServerProcess
    alice: str  # tokens
    mallory: str
    a: Running

    def http(self, token: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.server.url + API, headers=headers, timeout=20)


def _ok(http: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    r = http.request(method, path, **kw)
    assert r.is_success, (method, path, r.status_code, r.text)
    return r.json()


def _tenant(server: ServerProcess, user: str, org: str, project: str) -> str:
    with server.http() as op:
        token = str(_ok(op, "POST", "/users", json={"name": user})["token"])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url + API, headers=headers, timeout=20) as http:
        body = {"name": org, "display_name": org, "kind": "university"}
        _ok(http, "POST", "/organisations", json=body)
        _ok(http, "POST", "/projects", json={"name": project, "organisation": org})
    return token


def job_dir(server: ServerProcess, job_id: int) -> Path:
    """Where the local backend keeps the job's run (`<id>-<instance>`), found as root."""
    found = wait_for(
        lambda: sorted((server.home / "jobs").glob(f"{job_id}-*")), what=f"job {job_id}'s dir"
    )
    return found[-1]


@pytest.fixture(scope="module")
def tenants(server: ServerProcess) -> Iterator[Tenants]:
    alice = _tenant(server, "alice", "org-a", "pa")
    mallory = _tenant(server, "mallory", "org-b", "pb")
    token, child = f"attack-{uuid.uuid4().hex}", unique_duration()
    t = Tenants(server, alice, mallory, Running(0, token, child, Path(), ""))
    with t.http(alice) as http:
        archive = make_archive(server.home.parent / "a.tar.gz", [file_entry("code.py", b"A")])
        headers = {"Content-Type": "application/gzip"}
        upload = _ok(http, "POST", "/workdirs", content=archive.read_bytes(), headers=headers)
        t.a.workdir = upload["digest"]
        argv = [PY, "-c", VICTIM, token, child]
        body = job_body(project="pa", argv=argv, memory_bytes=2**28, workdir=t.a.workdir)
        t.a.id = int(_ok(http, "POST", "/jobs", json=body)["id"])
    t.a.dir = job_dir(server, t.a.id)
    log = t.a.dir / "stdout.log"
    wait_for(lambda: log.exists() and "ready\n" in log.read_text(), what="A's job to be ready")
    yield t
    (t.a.dir / "work" / "release").touch()
    with t.http(alice) as http:
        wait_final(http, t.a.id)


def attack(
    t: Tenants, script: str, *, network: str | None = None, **env: str
) -> tuple[dict[str, Any], Path]:
    """Run `script` as a job of mallory's; what it reported, and its directory."""
    body = job_body(project="pb", argv=[PY, "-c", script, f"attack-{uuid.uuid4().hex}"], env=env)
    if network is not None:
        body["network"] = network
    with t.http(t.mallory) as http:
        job = _ok(http, "POST", "/jobs", json=body)
        final = wait_final(http, job["id"])
    where = job_dir(t.server, job["id"])
    assert final["state"] == "succeeded", (final, (where / "stderr.log").read_text())
    if network is not None:
        assert final["network"] == network
    lines = (where / "stdout.log").read_text().splitlines()
    return json.loads(lines[-1]), where


def _a_alive(t: Tenants) -> bool:
    with t.http(t.alice) as http:
        state = _ok(http, "GET", f"/jobs/{t.a.id}")["state"]
    return state == "running" and bool(host_pids(t.a.token)) and bool(sleeping(t.a.child))


# --- 1, 2: the server's files and tenant A's -----------------------------------------------------------
READ_SERVER_FILES = (
    PRELUDE
    + """
home, jobs = os.environ["HOME_DIR"], os.path.dirname(os.path.dirname(os.environ["FABRIEK_WORKDIR"]))
tries["home listed"] = sorted(os.listdir(home))
tries["jobs listed"] = sorted(os.listdir(jobs))
for what, path in json.loads(os.environ["PATHS"]).items():
    attempt(what, lambda: read(path))
report()
"""
)


def test_b_reads_neither_the_servers_home_nor_its_config_nor_a_s_files(tenants: Tenants) -> None:
    t = tenants
    home, a_dir = t.server.home, t.a.dir
    paths = {
        "database": home / "fabriek.db",
        "A's upload": archive_path(home / "workdirs", t.a.workdir),
        "client config": Path(t.server.env["FABRIEK_CONFIG"]),
        "A's workdir": a_dir / "work" / "secret.txt",
        "A's code": a_dir / "work" / "code.py",
        "A's output": a_dir / "output" / "result.txt",
        "A's log": a_dir / "stdout.log",
        "A's error log": a_dir / "stderr.log",
        "A's spec": a_dir / "spec.marshal",
        "A's start": a_dir / "started.json",
    }
    for what, path in paths.items():  # there, on the machine (but the PostgreSQL server's file)
        assert path.exists() or (what == "database" and "FABRIEK_DATABASE_URL" in t.server.env)
    assert t.server.token in paths["client config"].read_text()
    env = {"HOME_DIR": str(home), "PATHS": json.dumps({k: str(v) for k, v in paths.items()})}
    got, b_dir = attack(t, READ_SERVER_FILES, **env)
    assert got.pop("home listed") == ["jobs"]  # the way to its own directory, nothing else
    assert got.pop("jobs listed") == [b_dir.name]
    assert got == dict.fromkeys(paths, "ENOENT")
    assert _a_alive(t)


# --- 2, 4: processes, signals, the server's environment ------------------------------------------------
def test_b_neither_sees_nor_kills_a_or_the_server(tenants: Tenants) -> None:
    t = tenants
    assert t.server.proc is not None
    server = t.server.proc.pid
    # The canary is the server's: its processes have it (read as root, from outside).
    assert f"{CANARY_VAR}={CANARY}".encode() in Path(f"/proc/{server}/environ").read_bytes()
    targets = {
        "server": server,
        **{f"worker{i}": pid for i, pid in enumerate(children_of(server))},
        "A": host_pids(t.a.token)[0],
        "A-child": sleeping(t.a.child)[0],
        "A-bwrap": json.loads((t.a.dir / "started.json").read_text())["pid"],
        "A-supervisor": json.loads((t.a.dir / "shim.json").read_text())["pid"],
    }
    assert len(targets) >= 7  # the server, its API workers, A's four
    env = {"A_TOKEN": t.a.token, "TARGETS": targets_env(targets)}
    got, _ = attack(t, SEE_AND_KILL, **env)
    assert [Path(p).name for p in got.pop("processes seen")] == ["bwrap", Path(PY).name]
    assert got.pop("A seen") == []
    assert got.pop("kill -1") == "ESRCH"
    assert got.pop("environ of the sandbox's init") == "EACCES"
    expected = {"read": "ENOENT", "environ": "ENOENT", "kill": "ESRCH"}
    assert got == {f"{verb} {what}": e for what in targets for verb, e in expected.items()}
    assert t.server.proc.poll() is None
    assert httpx.get(t.server.url + API + "/health", timeout=5).status_code == 200
    for what, pid in targets.items():
        assert Path(f"/proc/{pid}").exists(), what
    assert _a_alive(t)

    got, _ = attack(t, READ_ENV, CANARY_REVERSED=CANARY[::-1])
    assert CANARY_VAR not in got["variables"]
    assert got["canary in a readable environ"] == []


# --- 5: the network ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("network", "errno"), [("none", "ENETUNREACH"), ("loopback", "ECONNREFUSED")]
)
def test_b_without_the_network_reaches_neither_the_api_nor_postgresql(
    tenants: Tenants, network: str, errno: str
) -> None:
    t = tenants
    got, _ = attack(t, CONNECT, network=network, API_PORT=str(t.server.port))
    assert got == {"api": errno, "postgresql": errno, "postgresql's socket": "ENOENT"}


# --- every process and file is its project's -----------------------------------------------------------
def test_each_tenants_processes_and_files_are_its_projects_own(tenants: Tenants) -> None:
    t = tenants
    token = f"attack-{uuid.uuid4().hex}"
    with t.http(t.mallory) as http:
        body = job_body(project="pb", argv=[PY, "-c", VICTIM, token, unique_duration()])
        b_id = int(_ok(http, "POST", "/jobs", json=body)["id"])
    b_dir = job_dir(t.server, b_id)
    log = b_dir / "stdout.log"
    wait_for(lambda: log.exists() and "ready\n" in log.read_text(), what="B's job to be ready")
    uids = {}
    for who, where in (("A", t.a.dir), ("B", b_dir)):
        uid = uids[who] = where.joinpath("work").stat().st_uid
        assert 200000 <= uid <= 299999  # FABRIEK_UID_RANGE's default
        # Every process of the job but bubblewrap's init (root, without capabilities), as the
        # host sees it: its Python and its child.
        statuses = [status_of(pid) for pid in sandbox_processes(Job(0, "", where))]
        jobs_own = [s for s in statuses if s["NSpid"].split()[-1] != "1"]
        assert len(jobs_own) == 2, statuses
        for status in jobs_own:
            assert status["Uid"].split() == [str(uid)] * 4
            assert status["Gid"].split() == [str(uid)] * 4
        for name, mode in (("work", 0o700), ("output", 0o700), ("stdout.log", 0o600),
                           ("stderr.log", 0o600)):  # fmt: skip
            st = where.joinpath(name).stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, uid, mode), name
    assert uids["A"] != uids["B"]
    (b_dir / "work" / "release").touch()
    with t.http(t.mallory) as http:
        assert wait_final(http, b_id)["state"] == "succeeded"
