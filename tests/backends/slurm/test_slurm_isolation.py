"""Tenants apart on Slurm (issue 22): a job launched as its project runs as the project's uid and
gid on every node, seen from outside in /proc; its files lie in its project's folder, which no
other tenant may enter; it gets the clean environment and nothing of the server's. Then the attack:
two tenants' jobs on the same node through a real server, the second trying to read the first's
files and the server's environment, and sacct telling the tenants apart by account."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fabriek.backends.base import Handle, LaunchSpec, Phase
from fabriek.backends.slurm.backend import SlurmBackend
from fabriek.backends.slurm.devcluster import DevCluster
from fabriek.core.identity import Identity
from fabriek.core.jobs import JobState, Resources
from tests.backends.slurm.conftest import partition_on, partitions_toml
from tests.helpers import ServerProcess, free_port, server_env, wait_for

MB = 2**20
CANARY = "FABRIEK_ISOLATION_CANARY_SERVER_ONLY"  # set in the server's environment alone
UID = 200040


def spec(job_id: int, argv: list[str], *, nodes: int = 1, uid: int = UID) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        name="iso",
        argv=argv,
        env={"MINE": "mine"},
        resources=Resources(1, 128 * MB, 0),
        gpu_ids=(),
        time_limit_s=120,
        workdir_archive=None,
        instance="iso",
        nodes=nodes,
        identity=Identity(uid, uid, "isolated"),
    )


def tasks_of(cluster: DevCluster, slurm_id: int) -> list[int]:
    """Pids of the job's processes on this machine (every node's), by Slurm's environment."""
    marks = {f"SLURM_CLUSTER_NAME={cluster.name}".encode(), f"SLURM_JOB_ID={slurm_id}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if marks <= set((entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def ids_of(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and filesystem uids and gids, as the kernel shows them."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {int(u) for u in fields["Uid"].split()}, {int(g) for g in fields["Gid"].split()}


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_a_job_runs_as_its_project_on_every_node(
    slurm_pair: DevCluster, open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CANARY, "the server's secret")
    backend = SlurmBackend(partition_on(slurm_pair, open_dir))
    # Each task writes what it has to a file of its own (two tasks share the one log).
    dump = (
        "import json, os; out = os.environ['FABRIEK_OUTPUT_DIR'] + '/env-' + os.environ['RANK']; "
        "json.dump([dict(os.environ), os.getuid(), os.getgid(), os.getgroups()], open(out, 'w'))"
    )
    script = f'python3 -c "{dump}"; echo ready; sleep 60'
    handle: Handle = backend.submit(spec(1, ["sh", "-c", script], nodes=2))
    run = Path(handle["dir"])
    try:
        # From outside: every process of the job, on both nodes, is the project's uid and gid.
        pids = wait_for(
            lambda: (
                [p for p in tasks_of(slurm_pair, handle["slurm_id"]) if _is_sleep(p)]
                if (run / "stdout").exists() and (run / "stdout").read_text().count("ready") == 2
                else None
            ),
            timeout=60,
            what="the job's sleeps on both nodes",
        )
        assert len(pids) == 2
        for pid in tasks_of(slurm_pair, handle["slurm_id"]):
            if not _is_stepd(pid):  # slurmstepd itself is root's, by Slurm's design
                assert ids_of(pid) == ({UID}, {UID}), pid
    finally:
        backend.cancel(1, handle)
    wait_for(lambda: backend.poll({1: handle})[1].phase == Phase.FINISHED, timeout=60, what="end")
    seen = [json.loads((run / "outputs" / f"env-{rank}").read_text()) for rank in (0, 1)]
    for env, uid, gid, groups in seen:
        assert (uid, gid, groups) == (UID, UID, [UID])
        assert CANARY not in env  # nothing of the server's environment
        assert env["HOME"] == str(run / "work") and env["MINE"] == "mine"
        theirs = {k for k in env if k.startswith(("SLURM_", "SLURMD_", "SRUN_", "FABRIEK_"))}
        assert set(env) - theirs <= {
            "PATH", "HOME", "LANG", "MINE",  # the clean set and the user's own
            "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
            "GLOO_SOCKET_IFNAME",  # torch.distributed's
            "ENVIRONMENT", "HOSTNAME", "TMPDIR", "PWD",  # Slurm's own
        }, sorted(env)  # fmt: skip
    # Its files: in its project's folder, which only root changes and only the project enters.
    shared = open_dir
    assert owner_mode(shared / "projects") == (0, 0, 0o711)
    assert owner_mode(shared / "projects" / f"fp{UID}") == (0, UID, 0o750)
    assert owner_mode(run) == (UID, UID, 0o700)
    for name in ("spec.json", "stdout", "result.json"):
        assert owner_mode(run / name) == (UID, UID, 0o600), name
    state = Path(handle["state"])
    assert owner_mode(state) == (0, 0, 0o700) and (state / "submitted").exists()
    assert backend.job_dir(1, "iso") == run  # what retention removes


def test_a_server_that_is_not_root_runs_jobs_as_itself(
    slurm_pair: DevCluster, open_dir: Path
) -> None:
    backend = SlurmBackend(partition_on(slurm_pair, open_dir))
    backend.switch_users = False  # what a server that is not root finds: it cannot switch
    handle = backend.submit(spec(2, ["sh", "-c", "id -u"]))
    assert "state" not in handle and Path(handle["dir"]).parent == open_dir / "jobs"
    wait_for(lambda: backend.poll({2: handle})[2].phase == Phase.FINISHED, timeout=60, what="end")
    assert (Path(handle["dir"]) / "stdout").read_text() == f"{os.geteuid()}\n"
    assert not (open_dir / "projects").exists()


def test_a_job_launched_before_runs_were_kept_per_project_is_adopted_where_it_is(
    slurm_pair: DevCluster, open_dir: Path
) -> None:
    before = SlurmBackend(partition_on(slurm_pair, open_dir))
    before.switch_users = False  # as the server launched jobs before
    job = spec(3, ["true"])
    first = before.submit(job)
    (Path(first["dir"]) / "submitted").unlink()  # a crash lost its id; then the upgrade
    again = SlurmBackend(partition_on(slurm_pair, open_dir)).submit(job)
    assert again == first  # found by its comment, in its own directory: not submitted anew


def _is_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    except OSError:
        return False


def _is_stepd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmstepd"
    except OSError:
        return False


# --- the attack, through a server ---------------------------------------------------------------
ATTACK = r"""
import errno, json, os, sys
out = {}
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if kind == "list":
            os.listdir(path)
        elif kind == "read":
            open(path, "rb").read()
        else:
            open(path, "wb").write(b"B was here")
        out[path] = "ok"
    except OSError as exc:
        out[path] = errno.errorcode[exc.errno]
print("ATTACK", json.dumps(out))
print("CANARY", json.dumps(os.environ.get("%s")))
"""


@pytest.fixture
def tenants_server(
    slurm_accounted: DevCluster, open_dir: Path, tmp_path: Path
) -> Iterator[ServerProcess]:
    partitions = tmp_path / "partitions.toml"
    partitions.write_text(partitions_toml(slurm_accounted, open_dir, local=False))
    home = tmp_path / "home"
    home.mkdir()
    env = server_env(home, FABRIEK_PARTITIONS_FILE=str(partitions), **{CANARY: "server secret"})
    server = ServerProcess(home=home, port=free_port(), env=env)
    server.start()
    yield server
    server.stop()


def _as(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def _ok(response: httpx.Response) -> dict[str, object]:
    assert response.status_code in (200, 201, 204), response.text
    return dict(response.json()) if response.content else {}


def _tenant(server: ServerProcess, user: str, org: str, project: str) -> str:
    """A user with their own organisation and project; their token."""
    with server.http() as admin:
        token = str(_ok(admin.post("/users", json={"name": user}))["token"])
    body = {"name": org, "display_name": org, "kind": "health", "country": "NL", "region": "NL11"}
    with _as(server, token) as http:
        _ok(http.post("/organisations", json=body))
        _ok(http.post("/projects", json={"name": project, "organisation": org}))
    return token


def _submit(server: ServerProcess, token: str, project: str, argv: list[str]) -> int:
    with _as(server, token) as http:
        job = _ok(
            http.post(
                "/jobs",
                json={
                    "name": "tenant",
                    "argv": argv,
                    "project": project,
                    "memory_bytes": 256 * MB,
                    "time_limit_s": 120,
                },
            )
        )
    return int(job["id"])  # type: ignore[call-overload]


def _job(server: ServerProcess, job_id: int) -> dict[str, object]:
    with server.http() as http:
        return _ok(http.get(f"/jobs/{job_id}"))


def _associations(cluster: DevCluster, account: str) -> set[str]:
    shown = cluster.run(
        "sacctmgr", "-n", "-P", "show", "assoc", f"account={account}", "format=user"
    ).stdout
    return {line for line in shown.splitlines() if line}


def test_tenant_b_cannot_reach_tenant_a_on_the_same_node(
    tenants_server: ServerProcess, slurm_accounted: DevCluster, open_dir: Path
) -> None:
    server, cluster = tenants_server, slurm_accounted
    ann = _tenant(server, "ann", "zkh", "zkh-scans")
    ben = _tenant(server, "ben", "rdw", "rdw-plates")
    secret = 'echo "patient 42" > "$FABRIEK_OUTPUT_DIR/secret"; id -u; echo ready; sleep 90'
    a = _submit(server, ann, "zkh-scans", ["sh", "-c", secret])
    wait_for(lambda: "ready" in server.cli("logs", str(a)).stdout, timeout=60, what="A ready")
    uid_a = int(server.cli("logs", str(a)).stdout.split()[0])
    (run_a,) = open_dir.glob(f"projects/fp{uid_a}/{a}-*")  # as root: where the layout puts it
    slurm_a = int(next(open_dir.glob(f"jobs/{a}-*/submitted")).read_text())

    # From outside: A's processes run as A's uid (slurmstepd, Slurm's own, as root).
    pids = [p for p in tasks_of(cluster, slurm_a) if not _is_stepd(p)]
    assert pids and all(ids_of(p) == ({uid_a}, {uid_a}) for p in pids), pids

    # B, on the same node (the cluster has one), tries A's files by their paths, the shared
    # directory's listings, the server's files there, and the server's environment.
    tries = [
        ("list", open_dir / "projects"),
        ("list", open_dir / "jobs"),
        ("list", run_a.parent),
        ("read", run_a / "stdout"),
        ("read", run_a / "spec.json"),
        ("read", run_a / "outputs" / "secret"),
        ("write", run_a / "outputs" / "planted"),
        ("read", open_dir / "jobs" / run_a.name / "submitted"),
        ("read", open_dir / "accounts.json"),
    ]
    argv = ["python3", "-c", ATTACK % CANARY] + [str(x) for pair in tries for x in pair]
    b = _submit(server, ben, "rdw-plates", argv)
    wait_for(lambda: _job(server, b)["state"] in ("succeeded", "failed"), timeout=90, what="B")
    log = server.cli("logs", str(b)).stdout
    assert _job(server, b)["state"] == "succeeded", log
    seen = json.loads(next(line for line in log.splitlines() if line.startswith("ATTACK "))[7:])
    assert seen == {str(path): "EACCES" for _, path in tries}, seen
    assert "CANARY null" in log  # the server's variable never reached the job
    assert not (run_a / "outputs" / "planted").exists()
    slurm_b = int(next(open_dir.glob(f"jobs/{b}-*/submitted")).read_text())
    uid_b = int(next(open_dir.glob(f"jobs/{b}-*/run")).readlink().parts[3][2:])
    assert uid_b != uid_a

    # sacct tells the tenants apart: A's account has A's job, as A's user, and not B's.
    def accounted() -> list[list[str]] | None:
        shown = cluster.run(
            "sacct", "-X", "-n", "-P", "-a", "-A", "zkh-scans", "-o", "JobIDRaw,User,Account",
            "--starttime=now-1hour",
        ).stdout  # fmt: skip
        lines = [line.split("|") for line in shown.splitlines() if line]
        return lines if any(int(line[0]) == slurm_a for line in lines) else None

    lines = wait_for(accounted, timeout=30, what="A's job in sacct -A zkh-scans")
    assert all(user == f"fp{uid_a}" and account == "zkh-scans" for _, user, account in lines)
    assert slurm_b not in {int(sid) for sid, _, _ in lines}
    server.cli("cancel", str(a))
    wait_for(lambda: _job(server, a)["state"] == "cancelled", timeout=60, what="A cancelled")


def test_membership_changes_reach_slurm(
    tenants_server: ServerProcess, slurm_accounted: DevCluster
) -> None:
    server, cluster = tenants_server, slurm_accounted
    ann = _tenant(server, "anna", "umcg", "umcg-mri")
    with server.http() as admin:
        _ok(admin.post("/users", json={"name": "Carl"}))
    # The organisation and project accounts, and Ann in both, at the server's next passes.
    wait_for(
        lambda: "anna" in _associations(cluster, "umcg-mri"), timeout=60, what="anna in umcg-mri"
    )
    assert "anna" in _associations(cluster, "org@umcg")
    with _as(server, ann) as http:
        _ok(http.put("/organisations/umcg/members/Carl", json={"role": "member"}))
        _ok(http.put("/projects/umcg-mri/members/Carl", json={"role": "member"}))
    wait_for(lambda: "carl" in _associations(cluster, "umcg-mri"), timeout=60, what="carl in")
    with _as(server, ann) as http:
        assert http.delete("/projects/umcg-mri/members/Carl").status_code in (200, 204)
    wait_for(lambda: "carl" not in _associations(cluster, "umcg-mri"), timeout=60, what="carl out")
    assert "carl" in _associations(cluster, "org@umcg")  # still in the organisation
    # The job's user stays associated with its project's account throughout.
    assert any(user.startswith("fp") for user in _associations(cluster, "umcg-mri"))
    done = _ok_state(server, ann, "umcg-mri")
    assert done == JobState.SUCCEEDED.value


def _ok_state(server: ServerProcess, token: str, project: str) -> str:
    job_id = _submit(server, token, project, ["true"])
    wait_for(
        lambda: _job(server, job_id)["state"] in ("succeeded", "failed"), timeout=60, what="job"
    )
    return str(_job(server, job_id)["state"])
