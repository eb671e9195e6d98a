"""A private, throw-away Slurm cluster on this one machine: for the tests, the benchmarks and a first try.

`start(root)` brings up munged, slurmctld, one slurmd per node and, with `accounting=True`, slurmdbd on
a fresh MariaDB database; it returns once `sinfo` shows every node idle (and slurmctld has registered
with slurmdbd). Everything it writes lies under `root`: etc/ (slurm.conf, slurmdbd.conf), state/,
spool/NODE/, log/ (each daemon's log, its stdout and stderr as NAME.out, jobcomp.txt), run/ (pid
files, the munge socket) and munge/ (key, seed). The daemons run in the foreground (`-D`, `-F`) as
plain background processes, each in its own session, with FABRIEK_DEVCLUSTER=<ClusterName> in their
environment. `stop()` TERMs them by pid (KILL after 5 s), then KILLs what they left: slurmstepds
(which inherit that variable) and job tasks (SLURM_CLUSTER_NAME=<ClusterName>); it removes the network
namespaces and drops the database. Needs root and the Debian packages slurm-wlm and munge (slurmdbd,
mariadb-client and a MariaDB server for accounting); `unavailable()` says what is missing.

Jobs run as their project's POSIX identity (`sbatch --uid`): the users and groups `fp<uid>` must
exist wherever Slurm looks them up (the submitting host, slurmctld, slurmdbd, every node). Here every
node is this machine, so `start()` adds those of `identities` (by default the first 64 uids of
fabriek's default range) to this machine's /etc/passwd and /etc/group, with useradd and groupadd:
no home, no password, no login shell. They are left when the cluster stops (another cluster on this
machine may be using them); a site gives them to every host through its directory (docs/slurm.md).
With accounting, slurmctld enforces associations (AccountingStorageEnforce=associations): a job runs
only under an account its user is associated with, as on a site that bills by account.

Several clusters live side by side: each gets a random ClusterName, its own free TCP ports, its own
munge socket and database, and, with more than one node, its own 10.231.X.0/24 (claimed under a file
lock after looking at `ip -o addr`, `ip link` and `ip netns list`). Node 1 runs on the host; node k > 1
runs in the network namespace fbk<X>n<k>, joined to the host by a veth pair on 10.231.X.(4j)/30
(host side .4j+1, node side .4j+2, j = k - 2). Node 1 and slurmctld listen on 10.231.X.1 then, on
127.0.0.1 for a single node. slurmd is started in a namespace with `nsenter --net` rather than
`ip netns exec`, which remounts /sys and so breaks slurmd.

From a shell (as root):

    python -m fabriek.backends.slurm.devcluster up /tmp/dc [--nodes 2] [--accounting]

prints `export SLURM_CONF=/tmp/dc/etc/slurm.conf` and the daemons' pids, then stays up until Ctrl-C or
SIGTERM and stops the cluster. Client commands need that SLURM_CONF (without it they look for a
controller in DNS and print resolve_ctls_from_dns_srv errors).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DAEMONS = ("munged", "slurmctld", "slurmd")
IDENTITY_TOOLS = ("useradd", "groupadd", "getent")
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel", "srun", "scontrol")
NETWORK_TOOLS = ("ip", "nsenter")
ACCOUNTING_TOOLS = ("slurmdbd", "sacct", "sacctmgr", "mysql")

PARTITION = "dev"
SUBNET_PREFIX = "10.231"
NETNS_DIR = Path("/run/netns")
# Serialises claiming a 10.231.X.0/24 between processes starting clusters at the same time.
CLAIM_LOCK = Path("/run/fabriek-devcluster.lock")
# The munge socket and slurmstepd's sockets (spool/NODE/NODE_JOB.STEP) must fit in sun_path (108 bytes).
MAX_ROOT_CHARS = 64
STOP_GRACE_S = 5.0
# The uids (= gids) of fabriek's projects that a cluster gives users and groups `fp<uid>` for: the
# first of FABRIEK_UID_RANGE's default, which a test's fresh database hands out from its start.
IDENTITIES = range(200000, 200064)
# Set in every daemon's environment (slurmstepd inherits it): how stop() finds what a cluster started.
MARK = "FABRIEK_DEVCLUSTER"
_SUBDIRS = ("etc", "state", "spool", "log", "run", "munge")


@dataclass(frozen=True)
class MariaDB:
    """Where slurmdbd keeps its accounting: a server that the `mysql` client reaches as this user."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""

    def execute(self, sql: str, *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run SQL with the `mysql` client (no Python driver needed); never raises for SQL errors."""
        env = {**os.environ, "MYSQL_PWD": self.password}
        argv = ["mysql", "-h", self.host, "-P", str(self.port), "-u", self.user, "-N", "-e", sql]
        return subprocess.run(
            argv, env=env, text=True, capture_output=True, timeout=timeout, check=False
        )


class CommandFailed(subprocess.CalledProcessError):
    """A client command exited non-zero; unlike its base class, its message carries the stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()} {(self.stderr or self.stdout or '').strip()}"


@dataclass(frozen=True)
class _Link:
    """The veth pair that joins one node's network namespace to the host."""

    netns: str
    host_if: str
    node_if: str
    host_addr: str
    node_addr: str


@dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path  # the daemon's own log file; its stdout and stderr go to log/NAME.out


@dataclass
class DevCluster:
    """A running dev cluster. `stop()` (or leaving a `with` block) ends it; it is safe to call twice."""

    root: Path
    conf: Path
    name: str
    partition: str
    nodes: list[str]
    cpus_per_node: int
    memory_mb_per_node: int
    accounting: bool
    jobcomp_file: Path
    env: dict[str, str]
    database: str | None = None
    mariadb: MariaDB = field(default_factory=MariaDB)
    node_addrs: dict[str, str] = field(default_factory=dict)
    _daemons: list[_Daemon] = field(default_factory=list, repr=False)
    _links: list[_Link] = field(default_factory=list, repr=False)

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (sbatch, squeue, ...) against this cluster; output captured as text.

        It runs in `cwd`, by default `root`, so that a batch job's default working folder (and its
        slurm-ID.out) lands there. With `check`, a non-zero exit raises `CommandFailed` (a
        CalledProcessError whose message includes the stderr).
        """
        done = subprocess.run(
            list(argv),
            cwd=cwd or self.root,
            env={**os.environ, **self.env},
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise CommandFailed(done.returncode, list(argv), done.stdout, done.stderr)
        return done

    def pids(self) -> dict[str, int]:
        """The daemons' pids by name (slurmd as slurmd:NODE)."""
        return {d.name: d.proc.pid for d in self._daemons}

    @property
    def netns(self) -> list[str]:
        """The network namespaces of nodes 2 and later (none for a single node)."""
        return [link.netns for link in self._links]

    @property
    def host_interfaces(self) -> list[str]:
        """The host ends of the veth pairs."""
        return [link.host_if for link in self._links]

    def log_tail(self, *names: str, lines: int = 30) -> str:
        """The last lines of the named daemons' logs and stdout (all daemons when none is named)."""
        chosen = [d for d in self._daemons if not names or d.name.split(":")[0] in names]
        paths = dict.fromkeys(p for d in chosen for p in (d.log, _out_file(self.root, d.name)))
        return "\n".join(_tail(p, lines) for p in paths)

    def processes(self) -> list[int]:
        """Every live process of this cluster: its daemons, their slurmstepds and the jobs' tasks.

        Found by environment: the daemons (and the slurmstepds they start) carry
        FABRIEK_DEVCLUSTER=NAME, job tasks SLURM_CLUSTER_NAME=NAME. slurmstepd leaves slurmd's session
        (setsid), so a session or process group would miss them.
        """
        return _marked({f"{MARK}={self.name}".encode(), f"SLURM_CLUSTER_NAME={self.name}".encode()})

    def stop(self) -> None:
        """End every daemon (TERM, up to 5 s, KILL) and KILL its slurmstepds and job tasks, remove
        the namespaces and veth pairs, drop the database. Idempotent; never raises."""
        daemon_pids = {d.proc.pid for d in self._daemons}

        def stragglers() -> list[int]:
            return [pid for pid in self.processes() if pid not in daemon_pids]

        slurm = [d.proc for d in self._daemons if d.name != "munged"]
        munge = [d.proc for d in self._daemons if d.name == "munged"]
        with contextlib.suppress(Exception):
            _terminate(slurm, stragglers, STOP_GRACE_S)
        with contextlib.suppress(Exception):  # last: the slurm daemons talk to it until they go
            _terminate(munge, stragglers, STOP_GRACE_S)
        self._daemons = []
        for link in self._links:
            _quiet("ip", "link", "delete", link.host_if)
            _quiet("ip", "netns", "delete", link.netns)
        self._links = []
        if self.database:
            with contextlib.suppress(Exception):
                self.mariadb.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
            self.database = None

    def __enter__(self) -> DevCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unavailable(
    *, nodes: int = 1, accounting: bool = False, mariadb: MariaDB | None = None
) -> str | None:
    """None when a dev cluster (of `nodes` nodes, with `accounting`) can be started here; else a
    sentence saying why not (binaries missing, not root, MariaDB not answering, ...)."""
    if sys.platform != "linux":
        return "a Slurm dev cluster needs Linux."
    if os.geteuid() != 0:
        return "a Slurm dev cluster needs root (its daemons run as SlurmUser=root)."
    wanted = DAEMONS + CLIENTS + IDENTITY_TOOLS + (NETWORK_TOOLS if nodes > 1 else ())
    wanted += ACCOUNTING_TOOLS if accounting else ()
    missing = [p for p in wanted if shutil.which(p, path=_search_path()) is None]
    if missing:
        return (
            f"programs missing for a Slurm dev cluster: {', '.join(missing)} "
            "(Debian: slurm-wlm munge slurmdbd mariadb-client iproute2 util-linux)."
        )
    if accounting:
        db = mariadb or MariaDB()
        try:
            answer = db.execute("SELECT 1", timeout=10)
        except subprocess.TimeoutExpired:
            return f"MariaDB at {db.host}:{db.port} did not answer within 10 s."
        if answer.returncode != 0:
            return f"MariaDB at {db.host}:{db.port} refused us: {answer.stderr.strip()}"
    return None


def start(
    root: Path,
    *,
    nodes: int = 1,
    accounting: bool = False,
    cpus_per_node: int = 2,
    memory_mb_per_node: int = 2048,
    timeout: float = 60,
    mariadb: MariaDB | None = None,
    identities: Sequence[int] = IDENTITIES,
) -> DevCluster:
    """Start munged, slurmctld, slurmd (one per node; the second and later in network namespaces) and,
    with `accounting`, slurmdbd; return once `sinfo` shows every node idle and, with accounting, the
    cluster is registered in slurmdbd (so sacct will see its jobs). The users and groups `fp<uid>`
    for each uid of `identities` exist on this machine (and so on every node) first.

    `root` is created if missing; the subfolders this module owns in it (etc, state, spool, log, run,
    munge) are wiped first. On any failure the started part is stopped and RuntimeError raised, its
    message ending in the tail of the relevant daemon log.
    """
    if nodes < 1 or nodes > 64:
        raise ValueError(f"nodes must be between 1 and 64, not {nodes}")
    if cpus_per_node < 1 or memory_mb_per_node < 1:
        raise ValueError("a node needs at least one CPU and one MB of memory")
    why = unavailable(nodes=nodes, accounting=accounting, mariadb=mariadb)
    if why:
        raise RuntimeError(why)
    root = Path(root).absolute()
    if len(str(root)) > MAX_ROOT_CHARS or re.search(r"[\s#]", str(root)):
        raise ValueError(
            f"root {root} must be at most {MAX_ROOT_CHARS} characters (unix socket paths) "
            "without blanks or '#' (slurm.conf)"
        )
    name = f"fbk{secrets.token_hex(4)}"
    cluster = DevCluster(
        root=root,
        conf=root / "etc" / "slurm.conf",
        name=name,
        partition=PARTITION,
        nodes=[f"node{k}" for k in range(1, nodes + 1)],
        cpus_per_node=cpus_per_node,
        memory_mb_per_node=memory_mb_per_node,
        accounting=accounting,
        jobcomp_file=root / "log" / "jobcomp.txt",
        env={"SLURM_CONF": str(root / "etc" / "slurm.conf")},
        mariadb=mariadb or MariaDB(),
    )
    deadline = time.monotonic() + timeout
    try:
        _prepare_root(root)
        ensure_identities(identities)
        _bring_up(cluster, deadline)
    except BaseException as e:
        cluster.stop()
        if isinstance(e, RuntimeError) or not isinstance(e, Exception):
            raise  # ours, with its log tail; or KeyboardInterrupt and the like
        raise RuntimeError(f"the dev cluster under {root} did not start: {e}") from e
    return cluster


# -- bringing a cluster up --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What the configuration files say: ports and addresses, chosen before any daemon starts."""

    ctl_addr: str
    ctl_port: int
    slurmd_port: int
    dbd_port: int
    munge_socket: Path


def _bring_up(c: DevCluster, deadline: float) -> None:
    ctl_port, slurmd_port, dbd_port = _free_ports(3)
    if len(c.nodes) > 1:
        c._links = _claim_network(len(c.nodes) - 1)
        ctl_addr = c._links[0].host_addr
        c.node_addrs = {c.nodes[0]: ctl_addr}
        c.node_addrs |= {n: lk.node_addr for n, lk in zip(c.nodes[1:], c._links, strict=True)}
    else:
        ctl_addr = "127.0.0.1"
        c.node_addrs = {c.nodes[0]: ctl_addr}
    plan = _Plan(ctl_addr, ctl_port, slurmd_port, dbd_port, c.root / "run" / "munge.socket")
    _start_munged(c, plan, deadline)
    (c.root / "etc" / "plugstack.conf").write_text("")  # not the system's /etc/slurm/plugstack.conf
    c.conf.write_text(_slurm_conf(c, plan))
    if c.accounting:
        _start_slurmdbd(c, plan, deadline)
    _spawn(c, "slurmctld", ["slurmctld", "-D", "-f", str(c.conf)], c.root / "log/slurmctld.log")
    netns = {c.nodes[k]: link.netns for k, link in enumerate(c._links, start=1)}
    for node in c.nodes:
        (c.root / "spool" / node).mkdir()
        argv = ["slurmd", "-D", "-f", str(c.conf), "-N", node]
        if node in netns:
            argv = ["nsenter", f"--net={NETNS_DIR / netns[node]}", *argv]
        _spawn(c, f"slurmd:{node}", argv, c.root / f"log/slurmd-{node}.log")
    # Clients that find no controller retry after a second: ask only once it listens.
    listening = partial(_listening, plan.ctl_addr, plan.ctl_port)
    _wait(c, deadline, "slurmctld to listen", listening, ("slurmctld",), interval=0.02)
    _wait(c, deadline, "every node idle in sinfo", lambda: _all_idle(c), ("slurmctld", "slurmd"))
    if c.accounting:
        _wait(
            c, deadline, "slurmctld registered in slurmdbd", lambda: _registered(c), ("slurmdbd",)
        )


def _prepare_root(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for sub in _SUBDIRS:
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir()
        (root / sub).chmod(0o755)
    (root / "munge").chmod(0o700)  # munged refuses a key that others may read


def _start_munged(c: DevCluster, plan: _Plan, deadline: float) -> None:
    key = c.root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    argv = [
        "munged",
        "--foreground",  # which also sends its log to stderr: log/munged.out
        "--force",
        f"--socket={plan.munge_socket}",
        f"--key-file={key}",
        f"--pid-file={c.root / 'run' / 'munged.pid'}",
        f"--seed-file={c.root / 'munge' / 'munged.seed'}",
    ]
    _spawn(c, "munged", argv, c.root / "log" / "munged.out")
    ready = plan.munge_socket.exists
    _wait(c, deadline, f"munged's socket {plan.munge_socket}", ready, ("munged",), interval=0.02)


def _slurm_conf(c: DevCluster, plan: _Plan) -> str:
    r = c.root
    lines = [
        f"ClusterName={c.name}",
        # slurmctld only runs on a host whose short name is this one; the address is what others dial.
        f"SlurmctldHost={socket.gethostname().split('.')[0]}({plan.ctl_addr})",
        f"SlurmctldPort={plan.ctl_port}",
        f"SlurmdPort={plan.slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={plan.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={r}/state",
        f"SlurmdSpoolDir={r}/spool/%n",
        f"SlurmctldPidFile={r}/run/slurmctld.pid",
        f"SlurmdPidFile={r}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={r}/log/slurmctld.log",
        f"SlurmdLogFile={r}/log/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"PlugStackConfig={r}/etc/plugstack.conf",
        "MailProg=/bin/true",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        # Without a default a job without --mem takes the whole node's memory: one job per node.
        f"DefMemPerCPU={max(1, c.memory_mb_per_node // c.cpus_per_node)}",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "ReturnToService=2",
        # Trust the node lines: a node may claim more CPUs than the machine has.
        "SlurmdParameters=config_overrides",
        # Every message goes straight from its sender: namespaces reach the host, not each other.
        "TreeWidth=65533",
        "KillWait=5",
        "InactiveLimit=0",
        "MessageTimeout=10",
        "SlurmdTimeout=60",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={c.jobcomp_file}",
    ]
    if c.accounting:
        lines += [
            "JobAcctGatherType=jobacct_gather/linux",  # TotalCPU and MaxRSS in sacct
            # A job runs only under an association of its user and account (fabriek makes them).
            "AccountingStorageEnforce=associations",
            "JobAcctGatherFrequency=task=5",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={plan.dbd_port}",
            # Talking to slurmdbd, clients and slurmctld take the munge socket from here, not AuthInfo.
            f"AccountingStoragePass={plan.munge_socket}",
        ]
    lines += [
        f"NodeName={node} NodeAddr={c.node_addrs[node]} NodeHostname={node} "
        f"CPUs={c.cpus_per_node} RealMemory={c.memory_mb_per_node} State=UNKNOWN"
        for node in c.nodes
    ]
    lines.append(f"PartitionName={c.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _start_slurmdbd(c: DevCluster, plan: _Plan, deadline: float) -> None:
    """Create the database, start slurmdbd on it and register the cluster before slurmctld starts."""
    database = f"fabriek_dc_{c.name}"
    made = c.mariadb.execute(f"CREATE DATABASE `{database}`")
    if made.returncode != 0:
        raise RuntimeError(f"could not create the database {database}: {made.stderr.strip()}")
    c.database = database
    log = c.root / "log" / "slurmdbd.log"
    lines = [
        "AuthType=auth/munge",
        f"AuthInfo=socket={plan.munge_socket}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={plan.dbd_port}",
        "SlurmUser=root",
        f"PidFile={c.root}/run/slurmdbd.pid",
        f"LogFile={log}",
        "DebugLevel=info",
        "StorageType=accounting_storage/mysql",
        f"StorageHost={c.mariadb.host}",
        f"StoragePort={c.mariadb.port}",
        f"StorageUser={c.mariadb.user}",
        f"StorageLoc={database}",
    ]
    if c.mariadb.password:
        lines.append(f"StoragePass={c.mariadb.password}")
    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF, and only if no one else may read it.
    dbd_conf = c.conf.with_name("slurmdbd.conf")
    dbd_conf.touch(mode=0o600)
    dbd_conf.write_text("\n".join(lines) + "\n")
    _spawn(c, "slurmdbd", ["slurmdbd", "-D"], log)
    listening = partial(_listening, "127.0.0.1", plan.dbd_port)
    _wait(c, deadline, "slurmdbd to listen", listening, ("slurmdbd",), interval=0.02)

    def add_cluster() -> bool:
        listed = c.run(
            "sacctmgr", "-n", "-P", "list", "cluster", "format=cluster", check=False, timeout=10
        )
        if listed.returncode != 0:
            return False  # slurmdbd not answering yet
        if c.name not in listed.stdout.split():
            c.run("sacctmgr", "-i", "add", "cluster", c.name, check=False, timeout=10)
            return False
        return True

    _wait(c, deadline, f"sacctmgr to list cluster {c.name}", add_cluster, ("slurmdbd",))


def _listening(addr: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((addr, port)) == 0


def _all_idle(c: DevCluster) -> bool:
    seen = c.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
    states = dict(line.split() for line in seen.stdout.splitlines() if len(line.split()) == 2)
    return seen.returncode == 0 and all(states.get(node) == "idle" for node in c.nodes)


def _registered(c: DevCluster) -> bool:
    """slurmctld has told slurmdbd where it listens: from then on its jobs are recorded."""
    shown = c.run(
        "sacctmgr",
        "-n",
        "-P",
        "show",
        "cluster",
        c.name,
        "format=controlhost",
        check=False,
        timeout=10,
    )
    return shown.returncode == 0 and shown.stdout.strip() != ""


def ensure_identities(uids: Sequence[int]) -> list[int]:
    """Give each uid of `uids` a group `fp<uid>` (gid = uid) and a user `fp<uid>` in it on this
    machine, where missing: no home, no password, nologin. Returns the uids it added. Under the
    claim lock: clusters starting side by side add each once."""
    added = []
    with _claim_lock():
        for uid in uids:
            name = f"fp{uid}"
            if not _known("group", str(uid)):
                _must("groupadd", "--gid", str(uid), name)
            if not _known("passwd", str(uid)):
                _must(
                    "useradd", "--uid", str(uid), "--gid", str(uid), "--no-create-home",
                    "--no-user-group", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                    "--comment", "fabriek project identity", name,
                )  # fmt: skip
                added.append(uid)
    return added


def _known(database: str, key: str) -> bool:
    """Whether getent finds `key` in `database` (passwd, group): what Slurm's lookups see."""
    found = subprocess.run(["getent", database, key], capture_output=True, check=False)
    return found.returncode == 0


def _must(*argv: str) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={"PATH": _search_path()}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def job_python() -> str:
    """A Python that jobs running as a project's uid can start: this one where every folder on
    its way lets others through (a virtual environment under /root does not), else the
    system's python3."""
    here = Path(sys.executable).resolve()
    if all(p.stat().st_mode & 0o001 for p in here.parents) and here.stat().st_mode & 0o001:
        return sys.executable
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


# -- processes --------------------------------------------------------------------------------------


def _out_file(root: Path, name: str) -> Path:
    return root / "log" / f"{name.replace(':', '-')}.out"


def _spawn(c: DevCluster, name: str, argv: list[str], log: Path) -> None:
    """Start a daemon in its own session, stdout and stderr to log/NAME.out, and remember it."""
    daemon_env = {**os.environ, **c.env, "PATH": _search_path(), MARK: c.name}
    with open(_out_file(c.root, name), "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=daemon_env,
            cwd=c.root,
            start_new_session=True,
        )
    c._daemons.append(_Daemon(name, proc, log))


def _wait(
    c: DevCluster,
    deadline: float,
    what: str,
    ready: Callable[[], T],
    logs: Sequence[str],
    interval: float = 0.05,
) -> T:
    """Poll `ready` until it returns something truthy; fail fast when a daemon exits meanwhile."""
    while True:
        for d in c._daemons:
            if d.proc.poll() is not None:
                raise RuntimeError(
                    f"{d.name} exited with status {d.proc.returncode} while waiting for {what}:\n"
                    + c.log_tail(d.name.split(":")[0])
                )
        with contextlib.suppress(subprocess.TimeoutExpired):  # a client that hangs: not ready yet
            if value := ready():
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n" + c.log_tail(*logs))
        time.sleep(interval)


def _terminate(
    procs: list[subprocess.Popen[bytes]], stragglers: Callable[[], list[int]], grace: float
) -> None:
    """TERM the daemons `procs`, wait up to `grace`, KILL those left; then KILL whatever
    `stragglers` finds (slurmstepd, job tasks: nothing of theirs is worth saving) until it finds
    nothing. Stragglers go last: slurmctld waits for its slurmscriptd when it shuts down."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    _poll_until(lambda: all(p.poll() is not None for p in procs), grace)  # poll reaps
    for p in procs:
        if p.poll() is None:
            p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=grace)

    def none_left() -> bool:
        left = stragglers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return not left

    _poll_until(none_left, grace)


def _poll_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _marked(marks: set[bytes]) -> list[int]:
    """Live processes whose environment holds one of `marks` (an exact NAME=VALUE)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # a zombie's reads empty
        except OSError:
            continue
        if marks & set(environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"--- {path}: (none)"
    return f"--- {path} (last {min(lines, len(text))} lines)\n" + "\n".join(text[-lines:])


def _search_path() -> str:
    """PATH with the sbin folders, where Debian puts the daemons, whatever the caller's PATH is."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    extra = [d for d in ("/usr/sbin", "/sbin", "/usr/local/sbin") if d not in path.split(":")]
    return ":".join([path, *extra])


def _quiet(*argv: str) -> None:
    with contextlib.suppress(Exception):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)


# -- ports and network ------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free now (all held open together, so that they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


@contextlib.contextmanager
def _claim_lock() -> Iterator[None]:
    with open(CLAIM_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _claim_network(extra_nodes: int) -> list[_Link]:
    """Claim a free 10.231.X.0/24 and give each extra node a namespace joined to it by a veth pair.

    X is free when no address, interface or namespace of this machine mentions it; the choice and
    the creation happen under a file lock, so concurrent starts pick different X.
    """
    with _claim_lock():
        taken = _taken_subnets()
        free = [x for x in range(256) if x not in taken]
        if not free:
            raise RuntimeError(f"every {SUBNET_PREFIX}.X.0/24 is in use on this machine")
        x = random.choice(free)
        links: list[_Link] = []
        try:
            for j in range(extra_nodes):
                base = ipaddress.IPv4Address(f"{SUBNET_PREFIX}.{x}.0") + 4 * j
                link = _Link(
                    netns=f"fbk{x}n{j + 2}",
                    host_if=f"fbk{x}n{j + 2}h",
                    node_if=f"fbk{x}n{j + 2}c",
                    host_addr=str(base + 1),
                    node_addr=str(base + 2),
                )
                links.append(link)
                _make_link(link)
        except BaseException:
            for link in links:
                _quiet("ip", "link", "delete", link.host_if)
                _quiet("ip", "netns", "delete", link.netns)
            raise
        return links


def _taken_subnets() -> set[int]:
    """The X of every 10.231.X seen in addresses, interface names and namespace names here."""
    seen = ""
    for argv in (["ip", "-o", "addr"], ["ip", "-o", "link"], ["ip", "netns", "list"]):
        seen += subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    with contextlib.suppress(OSError):
        seen += " ".join(os.listdir(NETNS_DIR))
    taken = {int(m) for m in re.findall(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.", seen)}
    taken |= {int(m) for m in re.findall(r"\bfbk(\d+)n\d+", seen)}
    return taken


def _make_link(link: _Link) -> None:
    ns = link.netns
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.node_if],
        ["ip", "link", "set", link.node_if, "netns", ns],
        ["ip", "addr", "add", f"{link.host_addr}/30", "dev", link.host_if],
        ["ip", "link", "set", link.host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{link.node_addr}/30", "dev", link.node_if],
        ["ip", "-n", ns, "link", "set", link.node_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        # The controller listens on the first pair's host address: reach it (and any host address)
        # through this pair's host end.
        ["ip", "-n", ns, "route", "add", "default", "via", link.host_addr],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


# -- command line -----------------------------------------------------------------------------------


def partitions_toml(
    cluster: DevCluster, shared: Path, *, local: bool = True, name: str = "slurm"
) -> str:
    """A partitions file (FABRIEK_PARTITIONS_FILE) for fabriek on this cluster (beside the local
    machine, unless `local` is false), with its shared directory at `shared`."""
    return (
        f"local = {'true' if local else 'false'}\n\n[slurm.{name}]\n"
        f'partition = "{cluster.partition}"\n'
        f"nodes = {len(cluster.nodes)}\n"
        f"cpus_per_node = {cluster.cpus_per_node}\n"
        f'memory_per_node = "{cluster.memory_mb_per_node}M"\n'
        f'shared_dir = "{shared}"\n'
        f'slurm_conf = "{cluster.conf}"\n'
        f"accounting = {'true' if cluster.accounting else 'false'}\n"
        f'jobcomp_file = "{cluster.jobcomp_file}"\n'
        f'python = "{job_python()}"\n'
        "grace_seconds = 2\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fabriek.backends.slurm.devcluster",
        description="Run a private Slurm cluster on this machine until Ctrl-C or SIGTERM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster under ROOT and keep it up")
    up.add_argument("root", type=Path)
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--accounting", action="store_true", help="slurmdbd on MariaDB: sacct works")
    up.add_argument("--cpus-per-node", type=int, default=2)
    up.add_argument("--memory-mb-per-node", type=int, default=2048)
    up.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)

    # Ctrl-C or SIGTERM, during start-up too, raises KeyboardInterrupt: start() and the `with` stop.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        cluster = start(
            args.root,
            nodes=args.nodes,
            accounting=args.accounting,
            cpus_per_node=args.cpus_per_node,
            memory_mb_per_node=args.memory_mb_per_node,
            timeout=args.timeout,
        )
    except (RuntimeError, ValueError) as e:
        print(f"devcluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    with cluster:
        partitions = cluster.root / "partitions.toml"
        partitions.write_text(partitions_toml(cluster, cluster.root / "shared"))
        print(f"export SLURM_CONF={cluster.conf}")
        print(f"export FABRIEK_PARTITIONS_FILE={partitions}  # fabriek up: partition `slurm`")
        print(f"# cluster {cluster.name}, partition {cluster.partition}, nodes {cluster.nodes}")
        for name, pid in cluster.pids().items():
            print(f"# {name} pid {pid}")
        print("# Ctrl-C or SIGTERM stops it", flush=True)
        try:
            while not (dead := [d.name for d in cluster._daemons if d.proc.poll() is not None]):
                time.sleep(1)
        except KeyboardInterrupt:
            print("# stopping", flush=True)
            return 0
        print(f"devcluster: {', '.join(dead)} exited; stopping", file=sys.stderr)
        print(cluster.log_tail(*{n.split(":")[0] for n in dead}), file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: object) -> None:
    # Once: a second Ctrl-C must not break off the stop that the first one began.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
