"""Who may do what changes at once, on every API process: the token cache is voided by the
server's AuthEpoch when roles, memberships or tokens change (issue 21, item 8)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Conflict
from fabriek.core.tenancy import OrgRole, ProjectRole
from fabriek.server.services import tenancy, users
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import (
    AuthEpoch,
    TokenCache,
    auth_changed,
    watch_auth_changes,
)
from tests.conftest import FrozenClock
from tests.helpers import ServerProcess, start_server, wait_for
from tests.server.factories import make_admin, make_user

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ALICE = Actor(7, "alice", is_operator=True)


def test_a_cached_token_is_not_used_once_the_epoch_moved() -> None:
    cache = TokenCache(AuthEpoch())
    cache.put("fbk_x", ALICE, expires_at=None, monotonic=0.0, epoch=cache.epoch.current)
    assert cache.get("fbk_x", now=NOW, monotonic=1.0) == ALICE
    cache.epoch.bump()
    assert cache.get("fbk_x", now=NOW, monotonic=1.0) is None


def test_an_entry_read_while_the_epoch_moved_is_never_used() -> None:
    """The reader takes the epoch before it reads the database; a change committed during the
    read leaves the entry stale from the start."""
    cache = TokenCache(AuthEpoch())
    before = cache.epoch.current
    cache.epoch.bump()  # a demotion commits while the token is being read
    cache.put("fbk_x", ALICE, expires_at=None, monotonic=0.0, epoch=before)
    assert cache.get("fbk_x", now=NOW, monotonic=0.1) is None


def test_the_epoch_is_shared_with_a_spawned_process() -> None:
    import multiprocessing

    epoch = AuthEpoch()
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=_bump_twice, args=(epoch.shared,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert epoch.current == 2


def _bump_twice(shared: object) -> None:
    theirs = AuthEpoch(shared)
    theirs.bump()
    theirs.bump()


def test_the_epoch_moves_after_commit_only_and_not_on_rollback(
    sessions: sessionmaker[Session],
) -> None:
    epoch = AuthEpoch()
    watch_auth_changes(sessions, epoch)
    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        auth_changed(session)
        raise RuntimeError("rolled back")
    assert epoch.current == 0
    with sessions() as session, session.begin():
        auth_changed(session)
        assert epoch.current == 0  # not before the change is visible
    assert epoch.current == 1
    with sessions() as session, session.begin():
        pass
    assert epoch.current == 1


Change = Callable[[Session, Actor, FrozenClock], object]

# Each change of who may do what, and whether it moves the epoch (a repeat that changes
# nothing does not).
CHANGES: list[tuple[str, Change, bool]] = [
    (
        "demote",
        lambda s, admin, clock: users.set_user_roles(
            s, actor=admin, name="bob", is_operator=False, now=clock()
        ),
        True,
    ),
    (
        "already not a reviewer",
        lambda s, admin, clock: users.set_user_roles(
            s, actor=admin, name="bob", is_reviewer=False, now=clock()
        ),
        False,
    ),
    (
        "org role",
        lambda s, admin, clock: tenancy.set_org_member(
            s, actor=admin, name="bob-org", user="bob", role=OrgRole.MANAGER, now=clock()
        ),
        True,
    ),
    (
        "same org role",
        lambda s, admin, clock: tenancy.set_org_member(
            s, actor=admin, name="bob-org", user="bob", role=OrgRole.MEMBER, now=clock()
        ),
        False,
    ),
    (
        "leave org",
        lambda s, admin, clock: tenancy.remove_org_member(
            s, actor=admin, name="carol-org", user="bob", now=clock()
        ),
        True,
    ),
    (
        "project role",
        lambda s, admin, clock: tenancy.set_project_member(
            s, actor=admin, name="vision", user="bob", role=ProjectRole.MANAGER, now=clock()
        ),
        True,
    ),
    (
        "leave project",
        lambda s, admin, clock: tenancy.remove_project_member(
            s, actor=admin, name="vision", user="bob", now=clock()
        ),
        True,
    ),
    (
        "revoke",
        lambda s, admin, clock: users.revoke_token(s, actor=admin, token_id=1, now=clock()),
        True,
    ),
]


@pytest.mark.parametrize(
    ("change", "moves"), [(c, m) for _, c, m in CHANGES], ids=[n for n, *_ in CHANGES]
)
def test_every_change_of_roles_memberships_and_tokens_moves_the_epoch(
    sessions: sessionmaker[Session], clock: FrozenClock, change: Change, moves: bool
) -> None:
    admin, _ = make_admin(sessions, clock())
    make_user(sessions, "bob", clock(), operator=True, projects=("vision",))
    make_user(sessions, "carol", clock(), org_role="owner")
    with sessions() as session, session.begin():
        tenancy.set_org_member(
            session, actor=admin, name="carol-org", user="bob", role=OrgRole.MEMBER, now=clock()
        )
    epoch = AuthEpoch()
    watch_auth_changes(sessions, epoch)
    with sessions() as session, session.begin():
        change(session, admin, clock)
    assert epoch.current == (1 if moves else 0)


def test_a_refused_change_moves_nothing(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    epoch = AuthEpoch()
    watch_auth_changes(sessions, epoch)
    with pytest.raises(Conflict), sessions() as session, session.begin():
        users.set_user_roles(session, actor=admin, name="admin", is_operator=False, now=clock())
    assert epoch.current == 0


# --- on a real server with 2 API worker processes ------------------------------------------------
def _workers_of(server: ServerProcess) -> set[int]:
    assert server.proc is not None
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _server_side_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the loopback connection from `client_port`."""
    want_local, want_remote = f":{server_port:04X}", f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if local.endswith(want_local) and remote.endswith(want_remote) and inode:
            return inode
    return None


def _owner_of(inode: int, workers: set[int]) -> int | None:
    for pid in workers:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if fd.readlink() == Path(f"socket:[{inode}]"):
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _ask(server: ServerProcess, method: str, path: str, token: str, workers: set[int],
         body: object = None) -> tuple[int, int | None]:  # fmt: skip
    """One request on a fresh connection: its status, and the worker process that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, "/api/v1" + path, json.dumps(body) if body is not None else None,
                     headers)  # fmt: skip
        response = conn.getresponse()
        response.read()
        assert conn.sock is not None
        inode = _server_side_inode(server.port, conn.sock.getsockname()[1])
        return response.status, _owner_of(inode, workers) if inode else None
    finally:
        conn.close()


def _ask_until_both_workers(
    server: ServerProcess, path: str, token: str, workers: set[int]
) -> set[int]:
    """Fresh connections until each worker has answered at least twice: the statuses seen."""
    answered: dict[int, int] = {}
    statuses: set[int] = set()
    for _ in range(200):
        status, worker = _ask(server, "GET", path, token, workers)
        statuses.add(status)
        if worker is not None:
            answered[worker] = answered.get(worker, 0) + 1
        if len(answered) == len(workers) and min(answered.values()) >= 2:
            return statuses
    raise AssertionError(f"the kernel spread 200 connections over {answered} only")


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("epoch") / "home", FABRIEK_WORKERS="2")
    yield server
    server.stop()


def test_a_demoted_operator_is_refused_at_once_by_every_worker(
    workers_server: ServerProcess,
) -> None:
    server = workers_server
    workers = wait_for(lambda: len(_workers_of(server)) == 2 and _workers_of(server))
    with server.http() as http:
        r = http.post("/users", json={"name": "olga", "is_operator": True})
        assert r.status_code == 201, r.text
        olga = r.json()["token"]
    # Both workers remember olga as an operator.
    assert _ask_until_both_workers(server, "/users", olga, workers) == {200}

    status, _ = _ask(server, "PATCH", "/users/olga", server.token, workers,
                     {"is_operator": False})  # fmt: skip
    assert status == 200
    # At once, on both workers: no request of hers after the demotion is an operator's.
    assert _ask_until_both_workers(server, "/users", olga, workers) == {403}

    # Promoted again: at once, too.
    status, _ = _ask(server, "PATCH", "/users/olga", server.token, workers,
                     {"is_operator": True})  # fmt: skip
    assert status == 200
    assert _ask_until_both_workers(server, "/users", olga, workers) == {200}


def test_a_revoked_token_is_refused_at_once_by_every_worker(
    workers_server: ServerProcess,
) -> None:
    server = workers_server
    workers = wait_for(lambda: len(_workers_of(server)) == 2 and _workers_of(server))
    with server.http() as http:
        r = http.post("/users", json={"name": "rita"})
        assert r.status_code == 201, r.text
        rita, token_id = r.json()["token"], None
        listed = http.get("/tokens", params={"user": "rita"}).json()
        token_id = listed[0]["id"]
    assert _ask_until_both_workers(server, "/whoami", rita, workers) == {200}
    status, _ = _ask(server, "DELETE", f"/tokens/{token_id}", server.token, workers)
    assert status == 200
    assert _ask_until_both_workers(server, "/whoami", rita, workers) == {401}
