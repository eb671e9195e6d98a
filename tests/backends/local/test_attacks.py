"""The attack suite below the API, on the local backend (issue 22, "The attack suite", 1-7).

Tenant A (uid 231001) and tenant B (uid 231002) run jobs at the same time on one LocalBackend
run as the server runs it: as root, each job in its bubblewrap sandbox with its cgroup's
limits. B's jobs are written as an attacker writes them: a Python script that tries each attack
and prints, as JSON, what each try got: the errno's name where the kernel refused it, or
"ok: ..." where it worked. The tests assert the name, and check from outside (as root, in the
host's /proc) that what B aimed at is there and unharmed, so that a refusal is the sandbox's
and not a wrong path's.

Skipped where jobs cannot run isolated here (not root, no bubblewrap), except under
FABRIEK_REQUIRE_ISOLATION=1 (CI), where that fails.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fabriek.backends.base import LaunchSpec, Observation, Phase
from fabriek.backends.local.backend import LocalBackend
from fabriek.backends.local.sandbox import python_paths
from fabriek.core.identity import Identity, Network
from fabriek.core.jobs import JobState, Resources
from tests.helpers import wait_for

G = 2**30
M = 2**20
A = Identity(231001, 231001, "tenant-a")
B = Identity(231002, 231002, "tenant-b")
PY = sys.executable  # jobs run the server's Python (sandbox.python_paths: read-only inside)
CANARY_VAR = "SERVER_SECRET_CANARY"  # as a secret in the server's environment would be


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the attack suite needs root: only then does each job run as its project's uid"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian: apt install bubblewrap)"
    return None


if (_why := _unavailable()) is not None:
    if os.environ.get("FABRIEK_REQUIRE_ISOLATION") == "1":
        pytest.fail(f"FABRIEK_REQUIRE_ISOLATION=1 but {_why}", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


# --- the attacker's toolkit, at the top of every script B (and A) runs ----------------------------
# The scripts must not harm the machine where the sandbox has failed (a job run as root, in the
# host's PID namespace): what would (kill -1, a fork bomb) is tried only as another uid than
# root, within an RLIMIT_NPROC, and written files have unique names the test removes.
PRELUDE = """
import errno, json, os, resource, signal, socket, subprocess, sys, time
TOKEN = sys.argv[1]
ROOT = os.getuid() == 0  # the sandbox failed: the test fails on it, the machine must not
tries = {}
def attempt(name, fn):
    try:
        got = fn()
    except OSError as exc:
        tries[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        tries[name] = "ok: " + repr(got)[:300]
def read(path, size=100):
    with open(path, "rb") as f:
        return f.read(size)
def write(path, text="B was here"):
    with open(path, "w") as f:
        f.write(text)
    return path
def report():
    print(json.dumps(tries), flush=True)
def hold():
    # Until the test lets it go (a file it puts in this job's own workdir), within a deadline.
    print("ready", flush=True)
    release = os.path.join(os.environ["FABRIEK_WORKDIR"], "release")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
"""

# Tenant A's job: leaves secrets where a job leaves them (workdir, outputs, both logs), then
# runs until released and says what it saw in its own /tmp, /var/tmp and /dev/shm.
VICTIM = (
    PRELUDE
    + """
write(os.path.join(os.environ["FABRIEK_WORKDIR"], "secret.txt"), "A-secret")
write(os.path.join(os.environ["FABRIEK_OUTPUT_DIR"], "result.txt"), "A-secret")
print("A-secret in the log", flush=True)
print("A-secret in the error log", file=sys.stderr, flush=True)
if len(sys.argv) > 2:
    # A child of its own, so that the job has more than one process to look at from outside.
    subprocess.Popen(["sleep", sys.argv[2]])
hold()
tries["private"] = {d: sorted(os.listdir(d)) for d in ("/tmp", "/var/tmp", "/dev/shm")}
tries["forks"] = [subprocess.run(["true"]).returncode for _ in range(5)]
report()
"""
)


@dataclass(frozen=True)
class Job:
    id: int
    token: str  # a word of its command line no other process has: how it is found from outside
    dir: Path


MakeBackend = Callable[..., LocalBackend]
_ids = itertools.count(1)


def new_id() -> int:
    return next(_ids)


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[MakeBackend]:
    """Builds a backend as the server does (as root, sandbox on), its jobs in ROOT/home/jobs
    (ROOT: the test's directory unless given); ROOT/home also holds what B must not read, as
    FABRIEK_HOME does: the database, with a secret in it. ROOT/client.json is a client config
    with a token."""
    made: list[LocalBackend] = []

    def make(root: Path = tmp_path, **kw: Any) -> LocalBackend:
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(home / "fabriek.db") as db:
            db.execute("CREATE TABLE IF NOT EXISTS tokens (hash TEXT)")
            db.execute("INSERT INTO tokens VALUES ('db-secret')")
        (root / "client.json").write_text('{"url": "x", "token": "fbk_config_secret"}')
        backend = LocalBackend(
            jobs_dir=home / "jobs",
            resources=Resources(2, 4 * G),
            gpus=[],
            kill_grace_seconds=0.5,
            metering=False,
            home=home,
            **kw,
        )
        assert backend.isolation.complete, backend.isolation.problems
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.launcher.close()


@pytest.fixture
def backend(make_backend: MakeBackend) -> LocalBackend:
    return make_backend()


def launch(
    backend: LocalBackend,
    script: str,
    *args: str,
    who: Identity,
    network: Network = Network.HOST,
    memory: int = G,
    env: dict[str, str] | None = None,
    time_limit_s: int = 60,
) -> Job:
    job_id, token = new_id(), f"attack-{uuid.uuid4().hex}"
    spec = LaunchSpec(
        job_id=job_id,
        name=f"job{job_id}",
        argv=[PY, "-c", script, token, *args],
        env=env or {},
        resources=Resources(1, memory, 0),
        gpu_ids=(),
        time_limit_s=time_limit_s,
        workdir_archive=None,
        identity=who,
        network=network,
    )
    backend.submit(spec)
    return Job(job_id, token, backend.job_dir(job_id))


def stdout(job: Job) -> str:
    path = job.dir / "stdout.log"
    return path.read_text() if path.exists() else ""


def ready(job: Job) -> None:
    wait_for(lambda: "ready\n" in stdout(job), what=f"job {job.id} to be ready ({job.dir})")


def release(job: Job) -> None:
    (job.dir / "work" / "release").touch()


def finished(backend: LocalBackend, job: Job, timeout: float = 30) -> Observation:
    handle = {"dir": str(job.dir)}

    def done() -> Observation | None:
        seen = backend.poll({job.id: handle})[job.id]
        return seen if seen.phase in (Phase.FINISHED, Phase.LOST) else None

    seen = wait_for(done, timeout=timeout, what=f"job {job.id} to finish")
    assert seen is not None
    return seen


def tries(job: Job, line: int = -1) -> dict[str, object]:
    """What the job's script reported: its last line of output (or the line numbered `line`)."""
    lines = stdout(job).splitlines()
    assert lines, (job.dir / "stderr.log").read_text()
    return dict(json.loads(lines[line]))


def succeeded(backend: LocalBackend, job: Job) -> dict[str, object]:
    seen = finished(backend, job)
    errors = (job.dir / "stderr.log").read_text()
    assert seen.outcome == JobState.SUCCEEDED, (seen, errors)
    return tries(job)


def host_pids(word: str, program: str | None = None) -> list[int]:
    """Processes of this machine with `word` in their command line (and running `program`, if
    given), as the host sees them."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if word.encode() in argv and (program is None or argv[0] == program.encode()):
            found.append(int(entry.name))
    return found


def unique_duration() -> str:
    """A `sleep` argument no other process of this machine has: how one is found from outside."""
    return f"1000.{uuid.uuid4().int % 10**12:012d}"


def sleeping(duration: str) -> list[int]:
    return host_pids(duration, "sleep")


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def sandbox_processes(job: Job) -> list[int]:
    """Every process in the job's PID namespace, found from outside: bubblewrap's child (the
    sandbox's init) and everything sharing its namespace."""
    bwrap = json.loads((job.dir / "started.json").read_text())["pid"]
    init = wait_for(lambda: next((p for p in children_of(bwrap)), None), what="the sandbox's init")
    namespace = os.readlink(f"/proc/{init}/ns/pid")
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"{entry.path}/ns/pid") == namespace:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def targets_env(targets: dict[str, int], spare: tuple[str, ...] = ()) -> str:
    """NAME=PID:SIGNAL words for SEE_AND_KILL: SIGKILL, signal 0 for those in `spare`."""
    return " ".join(
        f"{k}={v}:{0 if k in spare else signal.SIGKILL.value}" for k, v in targets.items()
    )


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _all_there(where: Path, names: tuple[str, ...]) -> bool:
    return all((where / name).exists() for name in names)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# --- 1. tenant A's files, by the paths the layout gives away ---------------------------------------
A_FILES = (
    "work/secret.txt",
    "output/result.txt",
    "stdout.log",
    "stderr.log",
    "spec.marshal",
    "started.json",
    "shim.json",
    "log.index",
    "lock",
)
READ_A = (
    PRELUDE
    + """
jobs = os.path.dirname(os.path.dirname(os.environ["FABRIEK_WORKDIR"]))  # .../jobs/<own id>/work
tries["jobs listed"] = sorted(os.listdir(jobs))
for a_id in os.environ["A_IDS"].split():
    a_dir = os.path.join(jobs, a_id)
    attempt(f"list {a_id}", lambda: os.listdir(a_dir))
    for name in os.environ["A_FILES"].split() + ["result.json"]:
        attempt(f"{a_id}/{name}", lambda: read(os.path.join(a_dir, name)))
report()
"""
)


def test_b_cannot_read_a_s_workdir_outputs_logs_spec_or_result(backend: LocalBackend) -> None:
    done_a = launch(backend, VICTIM, who=A)
    ready(done_a)
    release(done_a)  # A's first job ends: its result.json exists
    succeeded(backend, done_a)
    running_a = launch(backend, VICTIM, who=A)
    ready(running_a)
    for a in (done_a, running_a):  # they are there, for anyone who can see them
        wait_for(partial(_all_there, a.dir, A_FILES), what=f"A's files in {a.dir}")
        assert "A-secret" in (a.dir / "output" / "result.txt").read_text()
    assert (done_a.dir / "result.json").exists()

    env = {"A_IDS": f"{done_a.id} {running_a.id}", "A_FILES": " ".join(A_FILES)}
    b = launch(backend, READ_A, who=B, env=env)
    got = succeeded(backend, b)

    assert got.pop("jobs listed") == [str(b.id)]  # its own directory, nothing of A's
    assert got == {
        f"{a.id}/{name}" if name else f"list {a.id}": "ENOENT"
        for a in (done_a, running_a)
        for name in ("", *A_FILES, "result.json")
    }
    release(running_a)
    assert succeeded(backend, running_a)["forks"] == [0] * 5


# --- 2. FABRIEK_HOME, the client config, /proc, and signals -----------------------------------------
READ_HOME = (
    PRELUDE
    + """
home, config = os.environ["HOME_DIR"], os.environ["CONFIG"]
tries["home listed"] = sorted(os.listdir(home))
for path in (f"{home}/fabriek.db", f"{home}/workdirs", config, "/etc/shadow"):
    attempt(path, lambda: read(path))
report()
"""
)


def test_b_cannot_read_the_database_or_the_client_config(
    backend: LocalBackend, tmp_path: Path
) -> None:
    home, config = backend.jobs_dir.parent, tmp_path / "client.json"
    assert b"db-secret" in (home / "fabriek.db").read_bytes()
    (home / "workdirs").mkdir()
    b = launch(backend, READ_HOME, who=B, env={"HOME_DIR": str(home), "CONFIG": str(config)})
    got = succeeded(backend, b)
    assert got == {
        "home listed": ["jobs"],  # the way down to its own directory, made empty by the sandbox
        f"{home}/fabriek.db": "ENOENT",
        f"{home}/workdirs": "ENOENT",
        str(config): "ENOENT",
        "/etc/shadow": "EACCES",  # the system is there, read-only, as what the project's uid reads
    }


UNHIDE = (
    PRELUDE
    + """
home = os.environ["HOME_DIR"]
attempt("site file", lambda: read(os.environ["SITE_FILE"]))
attempt("database", lambda: read(f"{home}/fabriek.db"))
attempt("home listed", lambda: sorted(os.listdir(home)))
attempt("own output", lambda: write(os.environ["FABRIEK_OUTPUT_DIR"] + "/mine.txt"))
# root in a user namespace of its own, and from there: take away what hides the home
done = subprocess.run(["unshare", "-Urm", "sh", "-c", f"umount {home} && cat {home}/fabriek.db"],
                      capture_output=True)
tries["unshare umount"] = [done.returncode, done.stdout.decode(errors="replace")]
report()
"""
)


@pytest.fixture
def site_dir() -> Iterator[Path]:
    """An operator's directory outside /tmp (the sandbox's private /tmp would cover it)."""
    path = Path(tempfile.mkdtemp(prefix="fabriek-attacks-", dir="/srv"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_home_inside_a_read_only_path_stays_hidden(
    make_backend: MakeBackend, site_dir: Path
) -> None:
    """FABRIEK_HOME inside a path every sandbox sees read-only (an operator's extra path, or
    the server's Python): the sandbox lays an empty directory over the home, B's own directory
    stays reachable through it, and B cannot lift it."""
    (site_dir / "software.txt").write_text("the site's software")
    backend = make_backend(site_dir, sandbox_ro_paths=(str(site_dir),))
    home = backend.jobs_dir.parent
    env = {"HOME_DIR": str(home), "SITE_FILE": str(site_dir / "software.txt")}
    b = launch(backend, UNHIDE, who=B, env=env)
    got = succeeded(backend, b)
    assert got == {
        "site file": 'ok: b"the site\'s software"',  # the read-only path is there
        "database": "ENOENT",
        "home listed": "ok: ['jobs']",  # only what leads to its own directories
        "own output": f"ok: '{b.dir / 'output' / 'mine.txt'}'",
        "unshare umount": [32, ""],  # umount's "permission denied": the mount is locked
    }


SEE_AND_KILL = (
    PRELUDE
    + """
seen, a_seen = [], []
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read()
    except OSError:
        continue
    seen.append(argv.split(b"\\0")[0].decode())
    if os.environ["A_TOKEN"].encode() in argv:
        a_seen.append(pid)
tries["processes seen"], tries["A seen"] = seen, a_seen
for target in os.environ["TARGETS"].split():  # NAME=PID:SIGNAL
    what, _, pid_signal = target.partition("=")
    pid, _, signum = pid_signal.partition(":")
    attempt(f"read {what}", lambda: read(f"/proc/{pid}/cmdline"))
    attempt(f"environ {what}", lambda: read(f"/proc/{pid}/environ"))
    attempt(f"kill {what}", lambda: os.kill(int(pid), int(signum)))
if ROOT:
    tries["kill -1"] = "not tried: root"
else:  # every process it may signal
    attempt("kill -1", lambda: os.kill(-1, signal.SIGKILL))
attempt("environ of the sandbox's init", lambda: read("/proc/1/environ"))
report()
"""
)


def test_b_cannot_see_or_signal_a_or_the_server(backend: LocalBackend) -> None:
    a_child = unique_duration()
    a = launch(backend, VICTIM, a_child, who=A)
    ready(a)
    a_pids = host_pids(a.token)
    supervisor = json.loads((a.dir / "shim.json").read_text())["pid"]
    bwrap = json.loads((a.dir / "started.json").read_text())["pid"]
    launcher = backend.launcher._proc
    assert a_pids and launcher is not None
    targets = {
        "A": a_pids[0],
        "A-child": wait_for(lambda: sleeping(a_child), what="A's child")[0],
        "A-bwrap": bwrap,
        "A-supervisor": supervisor,
        "server": os.getpid(),  # this process runs the backend, as the server does
        "launcher": launcher.pid,
    }
    # Signal 0 to the server (this test run): kill(2) checks the same as for SIGKILL, and a
    # failed sandbox fails this test instead of ending the run.
    env = {"A_TOKEN": a.token, "TARGETS": targets_env(targets, spare=("server",))}
    b = launch(backend, SEE_AND_KILL, who=B, env=env)
    got = succeeded(backend, b)

    # Its own processes only: the sandbox's init (bubblewrap) and its Python.
    assert [Path(p).name for p in got.pop("processes seen")] == ["bwrap", Path(PY).name]  # type: ignore[attr-defined]
    assert got.pop("environ of the sandbox's init") == "EACCES"  # root's, not the project's
    assert got.pop("kill -1") == "ESRCH"  # nothing it may signal but itself
    assert got.pop("A seen") == []
    # Not in its PID namespace: no /proc entry to read, no process to signal.
    expected = {"read": "ENOENT", "environ": "ENOENT", "kill": "ESRCH"}
    assert got == {f"{verb} {what}": errno for what in targets for verb, errno in expected.items()}
    for what, pid in targets.items():  # all alive
        assert Path(f"/proc/{pid}").exists(), what
    release(a)
    assert succeeded(backend, a)["forks"] == [0] * 5


# --- 3. writing outside its own directories ---------------------------------------------------------
WRITE_OUT = (
    PRELUDE
    + """
jobs = os.path.dirname(os.path.dirname(os.environ["FABRIEK_WORKDIR"]))
a_dir = os.path.join(jobs, os.environ["A_ID"])
for where in ("/usr", "/etc", "", f"{a_dir}/work", jobs, os.environ["HOST_TMP"]):
    attempt(where or "/", lambda: write(f"{where}/{TOKEN}"))
attempt("make A's directory", lambda: os.mkdir(a_dir))
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    attempt(d, lambda: write(f"{d}/{TOKEN}"))
report()
hold()
"""
)


def test_b_cannot_write_outside_its_directories_and_its_tmp_is_its_own(
    backend: LocalBackend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a = launch(backend, VICTIM, who=A)
    ready(a)
    host_tmp = tmp_path / "shared"  # a world-writable directory of the host, as /tmp is
    host_tmp.mkdir(mode=0o1777)
    host_tmp.chmod(0o1777)
    env = {"A_ID": str(a.id), "HOST_TMP": str(host_tmp)}
    b = launch(backend, WRITE_OUT, who=B, env=env)
    ready(b)
    # Where B's files would be, had the sandbox failed: removed again, whatever happens.
    dirs = ("/usr", "/etc", "/", a.dir / "work", backend.jobs_dir, "/tmp", "/var/tmp", "/dev/shm")
    outside = [Path(d, b.token) for d in dirs]
    request.addfinalizer(lambda: _remove(outside))
    got = tries(b, line=0)
    assert got == {
        "/usr": "EROFS",
        "/etc": "EROFS",
        "/": "EACCES",
        str(a.dir / "work"): "ENOENT",
        str(backend.jobs_dir): "EACCES",
        str(host_tmp): "ENOENT",
        "make A's directory": "EACCES",  # not there in its view, and not its to make
        # its own private ones: written, and seen by no one else
        "/tmp": f"ok: '/tmp/{b.token}'",
        "/var/tmp": f"ok: '/var/tmp/{b.token}'",
        "/dev/shm": f"ok: '/dev/shm/{b.token}'",
    }
    release(a)  # A looks in its /tmp, /var/tmp and /dev/shm while B's files are in B's
    # Of /tmp, only the way down to its own directory and to the Python it runs (a checkout's
    # virtual environment may lie in /tmp, bound read-only on top of the private /tmp).
    ways = [Path(p) for p in (str(a.dir), *python_paths())]
    own_way = sorted({w.parts[2] for w in ways if len(w.parts) > 2 and w.parts[1] == "tmp"})
    assert succeeded(backend, a)["private"] == {"/tmp": own_way, "/var/tmp": [], "/dev/shm": []}
    assert [p for p in outside if p.exists()] == [] and list(host_tmp.iterdir()) == []
    release(b)
    finished(backend, b)


# --- 4. the server's environment -----------------------------------------------------------------
READ_ENV = (
    PRELUDE
    + """
tries["variables"] = sorted(os.environ)
canary = os.environ["CANARY_REVERSED"][::-1].encode()  # not in its own environment as such
seen = []
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        if canary in read(f"/proc/{pid}/environ", 1 << 20):
            seen.append(pid)
    except OSError:
        pass
tries["canary in a readable environ"] = seen
report()
"""
)


def test_b_cannot_read_the_servers_environment(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv(CANARY_VAR, canary)  # before the backend starts its launcher
    backend = make_backend()
    # B is told the canary's value to look for (as if it knew), in a variable of its own.
    b = launch(backend, READ_ENV, who=B, env={"CANARY_REVERSED": canary[::-1]})
    got = succeeded(backend, b)
    assert got == {
        "variables": sorted(
            [
                "CANARY_REVERSED",  # its own, passed with --env
                "CUDA_VISIBLE_DEVICES",
                "FABRIEK_CPUS",
                "FABRIEK_GPUS",
                "FABRIEK_JOB_ID",
                "FABRIEK_JOB_NAME",
                "FABRIEK_OUTPUT_DIR",
                "FABRIEK_WORKDIR",
                "HOME",
                "LANG",
                "LOGNAME",  # its project's user name, fp<uid>, as USER
                "PATH",
                "PWD",  # bubblewrap's, for its --chdir: the workdir
                "USER",
            ]
        ),
        "canary in a readable environ": [],
    }
    launcher = backend.launcher._proc
    assert launcher is not None  # the server's side had it: the supervisors' fork server
    assert f"{CANARY_VAR}={canary}".encode() in Path(f"/proc/{launcher.pid}/environ").read_bytes()


# --- 5. the network ---------------------------------------------------------------------------------
CONNECT = (
    PRELUDE
    + """
def connect(address, family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(address)
        return "connected"
attempt("api", lambda: connect(("127.0.0.1", int(os.environ["API_PORT"]))))
attempt("postgresql", lambda: connect(("127.0.0.1", 5432)))
attempt("postgresql's socket", lambda: connect("/var/run/postgresql/.s.PGSQL.5432", socket.AF_UNIX))
report()
"""
)


@pytest.mark.parametrize(
    ("network", "tcp"),
    [
        (Network.NONE, "ENETUNREACH"),  # no interface up, not even loopback
        (Network.LOOPBACK, "ECONNREFUSED"),  # its own loopback, where nothing listens
        (Network.HOST, "ok: 'connected'"),  # the control: the machine's network reaches the port
    ],
)
def test_a_job_without_the_network_reaches_neither_the_api_nor_postgresql(
    backend: LocalBackend, network: Network, tcp: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as api:  # stands for the API's port
        env = {"API_PORT": str(api.getsockname()[1])}
        b = launch(backend, CONNECT, who=B, network=network, env=env)
        got = succeeded(backend, b)
    assert got["api"] == tcp
    if network != Network.HOST:
        assert got["postgresql"] == tcp
    assert got["postgresql's socket"] == "ENOENT"  # /var/run is not in any sandbox


# --- 6. a process left behind -------------------------------------------------------------------------
LEAVE_BEHIND = (
    PRELUDE
    + """
setsid, double = sys.argv[2], sys.argv[3]
subprocess.Popen(["setsid", "nohup", "sleep", setsid], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, start_new_session=True)
if os.fork() == 0:  # a double fork: the grandchild is orphaned, in a session of its own
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", double])
    os._exit(0)
os.wait()
for controller in ("memory", "pids"):  # back to the root cgroup, out of the job's
    procs = f"/sys/fs/cgroup/{controller}/cgroup.procs"
    attempt(f"leave the {controller} cgroup", lambda: write(procs, str(os.getpid())))
report()
hold()
"""
)


def test_nothing_a_job_leaves_behind_outlives_it(
    backend: LocalBackend, request: pytest.FixtureRequest
) -> None:
    setsid, double = unique_duration(), unique_duration()
    request.addfinalizer(lambda: _kill(sleeping(setsid) + sleeping(double)))  # failed: no litter
    b = launch(backend, LEAVE_BEHIND, setsid, double, who=B)
    ready(b)
    # The cgroup hierarchy is not in its view (an empty tmpfs over /sys/fs/cgroup).
    assert tries(b, line=0) == {
        "leave the memory cgroup": "ENOENT",
        "leave the pids cgroup": "ENOENT",
    }

    def both() -> list[int]:
        found = sleeping(setsid) + sleeping(double)
        return found if len(found) == 2 else []

    for pid in wait_for(both, what="both detached sleeps to run"):
        assert status_of(pid)["Uid"].split()[0] == str(B.uid)
        assert "pids:/fabriek/job-" in Path(f"/proc/{pid}/cgroup").read_text()
    release(b)
    assert finished(backend, b).outcome == JobState.SUCCEEDED
    # The job has ended: at that moment, not some time later, nothing of it is left.
    assert sleeping(setsid) == [] and sleeping(double) == []


# --- 7. memory and a fork bomb --------------------------------------------------------------------------
EAT_MEMORY = (
    PRELUDE
    + """
held = []
for i in range(64):  # up to 1 GiB, 16 MiB at a time, every page touched
    held.append(bytearray(16 << 20))
    print("held", (i + 1) * 16, "MiB", flush=True)
"""
)


def test_a_job_over_its_memory_dies_and_the_other_tenant_carries_on(backend: LocalBackend) -> None:
    a = launch(backend, VICTIM, who=A)
    ready(a)
    b = launch(backend, EAT_MEMORY, who=B, memory=64 * M)
    seen = finished(backend, b)
    assert (seen.outcome, seen.signal, seen.reason) == (
        JobState.FAILED,
        signal.SIGKILL,
        "out of memory (limit 64M)",
    )
    assert "held 48 MiB" in stdout(b) and "held 80 MiB" not in stdout(b)
    release(a)
    assert succeeded(backend, a)["forks"] == [0] * 5


FORK_BOMB = (
    PRELUDE
    + """
if ROOT:
    sys.exit("not a fork bomb as root")
ceiling = 4 * int(os.environ["PIDS_MAX"])  # the machine's safety net, should the cgroup fail
resource.setrlimit(resource.RLIMIT_NPROC, (ceiling, ceiling))
made = 0
while True:
    try:
        pid = os.fork()
    except OSError as exc:
        print(errno.errorcode[exc.errno], made, flush=True)
        break
    if pid == 0:
        break  # the children join the bomb below
    made += 1
while True:  # every process forks for ever: the limit holds them, the time limit ends them
    try:
        os.fork()
    except OSError:
        time.sleep(0.001)
"""
)
PIDS_MAX = 64


def test_a_fork_bomb_stops_at_its_pids_limit_and_the_other_tenant_carries_on(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(pids_max=PIDS_MAX)
    a = launch(backend, VICTIM, who=A)
    ready(a)
    b = launch(backend, FORK_BOMB, who=B, time_limit_s=3, env={"PIDS_MAX": str(PIDS_MAX)})
    first = wait_for(lambda: stdout(b).split(), what="the bomb to reach its limit")
    assert first[0] == "EAGAIN" and 0 < int(first[1]) < PIDS_MAX, first
    # Meanwhile the machine forks, and so does A: five processes while B's bomb is at its limit.
    assert subprocess.run(["true"], check=False).returncode == 0
    release(a)
    assert succeeded(backend, a)["forks"] == [0] * 5
    seen = finished(backend, b)
    assert seen.outcome == JobState.TIMED_OUT  # it died at its time limit, bomb and all
    assert host_pids(b.token) == []


# --- every process and every file of a job is its project's -------------------------------------------
def test_every_process_and_file_of_a_job_is_its_projects(backend: LocalBackend) -> None:
    a = launch(backend, VICTIM, unique_duration(), who=A)
    b = launch(backend, VICTIM, unique_duration(), who=B)
    for job, who in ((a, A), (b, B)):
        ready(job)
        pids = sandbox_processes(job)
        statuses = {pid: status_of(pid) for pid in pids}
        init = [p for p, s in statuses.items() if s["NSpid"].split()[-1] == "1"]
        assert len(init) == 1 and Path(f"/proc/{init[0]}/exe").resolve().name == "bwrap"
        # bubblewrap's own init (it reaps, and forwards the exit code) stays root but holds
        # no capability; everything the job runs is its project's, with no other group.
        assert statuses.pop(init[0])["CapEff"] == "0" * 16
        assert len(statuses) == 2, statuses  # the job's Python and its sleep
        for s in statuses.values():
            assert s["Uid"].split() == [str(who.uid)] * 4
            assert s["Gid"].split() == [str(who.gid)] * 4
            assert s["Groups"] == "" and s["CapEff"] == "0" * 16 and s["NoNewPrivs"] == "1"
    for job, who in ((a, A), (b, B)):
        release(job)
        succeeded(backend, job)
        assert _owner_mode(job.dir) == (0, 0, 0o700)  # the server's
        for name, mode in (("work", 0o700), ("output", 0o700), ("stdout.log", 0o600),
                           ("stderr.log", 0o600)):  # fmt: skip
            assert _owner_mode(job.dir / name) == (who.uid, who.gid, mode), name
        assert _owner_mode(job.dir / "output" / "result.txt")[:2] == (who.uid, who.gid)


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# --- two servers on one machine ---------------------------------------------------------------------
def test_two_servers_jobs_of_the_same_id_keep_their_own_cgroups(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    """Two homes on one machine (a staging server beside production, two test suites): B's
    job on one has the id of A's on the other. B's limits must not become A's, and B's end
    must not end A."""
    one, two = make_backend(tmp_path / "one"), make_backend(tmp_path / "two")
    a = launch(one, VICTIM, who=A)
    ready(a)
    same_id = LaunchSpec(
        job_id=a.id,
        name="b",
        argv=[PY, "-c", "print('B ends at once')"],
        env={},
        resources=Resources(1, 64 * M, 0),
        gpu_ids=(),
        time_limit_s=60,
        workdir_archive=None,
        identity=B,
    )
    two.submit(same_id)
    assert finished(two, Job(a.id, "", two.job_dir(a.id))).outcome == JobState.SUCCEEDED
    assert host_pids(a.token), "B's end ended A's job"
    release(a)
    assert succeeded(one, a)["forks"] == [0] * 5


EVIL_SO = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {
    const char *log = getenv("EVIL_LOG");
    char exe[256] = "", line[400];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) exe[n] = 0;
    int fd = log ? open(log, O_WRONLY | O_APPEND | O_CREAT, 0666) : -1;
    if (fd >= 0) {
        int len = snprintf(line, sizeof line, "uid=%d exe=%s\n", (int)getuid(), exe);
        write(fd, line, len);
        close(fd);
    }
}
"""


def test_the_jobs_loader_variables_never_reach_what_runs_as_root(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """B sets LD_PRELOAD to a library of its own: were bubblewrap or setpriv (root, before the
    job drops its privileges) given the job's environment, the library's constructor would run
    as root on the host and write its uid to EVIL_LOG."""
    source, library, log = tmp_path / "evil.c", tmp_path / "evil.so", tmp_path / "evil.log"
    source.write_text(EVIL_SO)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "a C compiler builds the attacker's library"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    os.chmod(tmp_path, 0o755)  # any uid could load it from here
    env = {"LD_PRELOAD": str(library), "EVIL_LOG": str(log)}
    script = PRELUDE + "tries['preload'] = os.environ.get('LD_PRELOAD'); report()\n"
    b = launch(backend, script, who=B, env=env)
    got = succeeded(backend, b)
    assert got["preload"] == str(library)  # the job was given its variable...
    loaded = log.read_text() if log.exists() else ""
    assert loaded == "", f"the attacker's library ran outside the job: {loaded}"  # ...nothing else
    # Inside, the library is not in the job's view: the loader says so, and carries on.
    assert "cannot be preloaded" in (b.dir / "stderr.log").read_text()


def _keyctl(*args: object) -> int:
    import ctypes
    import platform

    numbers = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl
    assert platform.machine() in numbers, platform.machine()
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(*args))
    assert result >= 0, os.strerror(ctypes.get_errno())
    return result


def test_a_job_holds_none_of_the_servers_keys(backend: LocalBackend) -> None:
    """Kernel keyrings are not namespaced: a job that inherited the server's session keyring
    would list and read the server's keys (a systemd service has a keyring of its own)."""
    import platform

    add_key, keyctl = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
    secret = f"canary-{uuid.uuid4().hex}"
    key = _keyctl(add_key, b"user", secret.encode(), b"the server's secret", 19, -3)  # @s
    try:
        script = PRELUDE + (
            "attempt('keys', lambda: [l.split()[-2] for l in open('/proc/keys')])\n"
            f"attempt('read the key', lambda: open('/proc/keys').read().count('{secret}'))\n"
            "report()\n"
        )
        b = launch(backend, script, who=B)
        got = succeeded(backend, b)
    finally:
        _keyctl(keyctl, 21, key)  # KEYCTL_INVALIDATE
    assert got["read the key"] == "ok: 0"
    assert got["keys"] == "ok: ['_ses:']"  # its own session keyring, empty, and nothing else
