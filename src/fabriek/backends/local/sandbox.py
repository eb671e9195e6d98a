"""Each local job in a sandbox of its own, built by bubblewrap (Debian's `bubblewrap`).

Inside, a job sees the system read-only (the directories in SYSTEM_PATHS, the Python the server
runs from, and what the operator adds), its own work and output directories read-write, a
private /tmp, /var/tmp and /dev/shm, a /dev with only the null-like devices and its own GPUs'
nodes, a /proc of its own PID namespace (it sees and signals nothing outside its job), its own
IPC and UTS namespaces, and the network its job asked for (`core.identity.Network`). Nothing of
FABRIEK_HOME (database, tokens, other jobs) or of the server's environment reaches it.

Who runs what:
- Server as root: bubblewrap runs as root (it must: it binds the job's directories, which lie
  under the server's private home) and runs the job through `setpriv` as the project's uid and
  gid, with no capabilities, an empty bounding set and no_new_privs. Limits are the job's cgroup
  (backends/local/cgroups.py), joined before bubblewrap starts.
- Server as another user (a laptop): bubblewrap runs unprivileged in a user namespace of its
  own (nested user namespaces disabled), as the server's user: the sandbox holds, the identity
  is the server's (`fabriek up` says so).

docs/security.md ("Tenant isolation") states what this keeps apart and what it does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fabriek.backends.local import cgroups
from fabriek.backends.local.jail import ENV_FD, STATUS_FD
from fabriek.core.identity import Identity, Network

# Read-only inside every sandbox where they exist: the system's programs, libraries and
# configuration (no /home, /root, /run, /var, /srv, /mnt, /media: other users' and services'
# files and sockets stay out).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
SETPRIV = "setpriv"  # util-linux: drops to the project's ids inside the sandbox
SHELL = "/bin/sh"
ENV_FILE = "/run/fabriek/env"  # in the sandbox: `export NAME='value'` lines, shell-quoted
ENV_SCRIPT = f'. {ENV_FILE} || exit 126; exec "$@"'
PLAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # all bubblewrap and setpriv are given
PIDS_MAX_DEFAULT = 8192


@dataclass(frozen=True, slots=True)
class Isolation:
    """What this machine can do to keep jobs apart, as found at the server's start."""

    bwrap: str | None  # the bubblewrap binary, when the sandbox is on and works
    setpriv: str | None  # where the server is root: the binary that drops to the project's ids
    as_root: bool  # the server is root: jobs run as their project's uid
    cgroup: cgroups.Hierarchy | None  # where limits are enforced; None: accounted only
    problems: tuple[str, ...] = ()  # what is missing, in words
    ro_paths: tuple[str, ...] = ()  # extra read-only paths (settings.sandbox_ro_paths)
    pids_max: int = PIDS_MAX_DEFAULT

    @property
    def complete(self) -> bool:
        return self.bwrap is not None and self.as_root and self.cgroup is not None

    def describe(self) -> str:
        """One line for `fabriek up`."""
        if self.bwrap is None:
            return "jobs are NOT sandboxed: every job sees this machine as the server's user " + (
                f"({'; '.join(self.problems)})" if self.problems else ""
            )
        who = (
            "as their project's own uid"
            if self.as_root
            else "as the server's user (not root: one identity for every project)"
        )
        limits = (
            f"limits enforced by cgroup v{self.cgroup.version}"
            if self.cgroup
            else "limits only accounted (" + "; ".join(self.problems) + ")"
        )
        return f"jobs run sandboxed (bubblewrap), {who}, {limits}"


def probe(
    *,
    enabled: bool,
    ro_paths: tuple[str, ...] = (),
    pids_max: int = PIDS_MAX_DEFAULT,
    mountinfo: str = "/proc/self/mountinfo",
) -> Isolation:
    """Find bubblewrap and try it once (it may be installed where namespaces are not allowed),
    then the cgroup hierarchy. Never raises: what fails is named in `problems`."""
    as_root = os.geteuid() == 0
    problems: list[str] = []
    bwrap = shutil.which("bwrap") if enabled else None
    setpriv = shutil.which(SETPRIV) if as_root else None
    if not enabled:
        problems.append("FABRIEK_SANDBOX is off")
    elif bwrap is None:
        problems.append("bubblewrap is not installed (Debian: apt install bubblewrap)")
    elif as_root and setpriv is None:
        problems.append("setpriv (util-linux) is not installed")
        bwrap = None
    else:
        failure = _try(bwrap, as_root)
        if failure:
            problems.append(f"bubblewrap does not work here: {failure}")
            bwrap = None
    hierarchy: cgroups.Hierarchy | None = None
    if bwrap is not None:
        hierarchy, why = cgroups.find(mountinfo)
        if hierarchy is not None and not as_root:
            hierarchy, why = None, "the server is not root, so it cannot make cgroups"
        if hierarchy is not None:
            why = cgroups.prepare(hierarchy)
            hierarchy = hierarchy if not why else None
        if why:
            problems.append(why)
    return Isolation(bwrap, setpriv, as_root, hierarchy, tuple(problems), ro_paths, pids_max)


def _try(bwrap: str, as_root: bool) -> str:
    """Run `true` in a sandbox like a job's; "" when it worked, else bubblewrap's complaint."""
    argv = [bwrap, *_namespaces(as_root), "--ro-bind", "/", "/", "--proc", "/proc", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False, env=PLAIN_ENV)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    return done.stderr.decode(errors="replace").strip()[-300:] or f"exit {done.returncode}"


def _namespaces(as_root: bool) -> list[str]:
    user = [] if as_root else ["--unshare-user", "--disable-userns"]
    return [*user, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]


def python_paths() -> list[str]:
    """The Python installation the server runs from (jobs run `python` until they bring their
    own environment): its prefix, base prefix and the interpreter's real directory."""
    found = [sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent.parent)]
    return list(dict.fromkeys(p for p in found if p and p != "/"))


@dataclass(frozen=True, slots=True)
class Job:
    """What the sandbox of one job is built from."""

    job_id: int
    work: str
    output: str
    network: Network
    identity: Identity | None
    gpu_devices: tuple[str, ...] = ()  # /dev nodes of its GPUs (and the driver's shared ones)
    hide: tuple[str, ...] = ()  # host paths a read-only bind may include that it must not see


def argv(isolation: Isolation, job: Job) -> list[str]:
    """bubblewrap's command line for `job`, up to the job's own argv: where the server is root,
    `setpriv ... --`, which drops to the project's ids, then the shell that takes on the job's
    environment (ENV_SCRIPT) and becomes the job.

    bubblewrap and setpriv run as root and so never see the job's environment (they are started
    with PATH alone): a job's LD_PRELOAD, LD_LIBRARY_PATH or GCONV_PATH would otherwise load
    the tenant's code into them, as root. The environment reaches the job as a read-only file
    (on ENV_FD, see jail.py) that only the job's own first process, already the project's uid,
    reads."""
    assert isolation.bwrap is not None
    as_root = isolation.as_root
    line = [isolation.bwrap, *_namespaces(as_root)]
    line += ["--hostname", f"job-{job.job_id}", "--die-with-parent", "--new-session"]
    # `none` as root: the supervisor gives the job a network namespace with nothing up before
    # bubblewrap starts (bubblewrap's own would have loopback up). Unprivileged, loopback it is.
    if job.network == Network.LOOPBACK or (job.network == Network.NONE and not as_root):
        line.append("--unshare-net")
    line += ["--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", "/run/fabriek"]
    # The job's environment, as a file only the job's own first process reads (ENV_SCRIPT).
    line += ["--perms", "0444", "--ro-bind-data", str(ENV_FD), ENV_FILE]
    if job.network == Network.HOST:  # where resolv.conf may point
        line += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
    line += ["--proc", "/proc", "--dev", "/dev"]
    line += ["--ro-bind-try", "/sys", "/sys", "--tmpfs", "/sys/fs/cgroup"]
    line += ["--perms", "0755", "--dir", "/var"]  # else made 0700 root, above /var/tmp
    for private in ("/tmp", "/var/tmp", "/dev/shm"):
        line += ["--perms", "1777", "--tmpfs", private]
    # After the private /tmp: a read-only path below it (a checkout's virtual environment in
    # /tmp) is bound on top, not hidden under it.
    system = [*SYSTEM_PATHS, *python_paths(), *isolation.ro_paths]
    for path in dict.fromkeys(system):
        if path in SYSTEM_PATHS and os.path.islink(path):  # merged /usr: /bin -> usr/bin
            line += ["--symlink", os.readlink(path), path]  # a link costs less than a mount
        elif os.path.exists(path):
            line += _ancestors(path, line, [], ())
            line += ["--ro-bind", path, path]
    for path in job.hide:  # e.g. FABRIEK_HOME inside a read-only path: an empty tmpfs over it
        # 0755 root: the job passes through to its own directories below, and finds nothing else.
        line += ["--perms", "0755", "--tmpfs", path]
    for node in job.gpu_devices:
        line += ["--dev-bind-try", node, node]
    for path in (job.work, job.output):
        line += _ancestors(path, line, system, job.hide)
        line += ["--bind", path, path]
    line += ["--chdir", job.work, "--json-status-fd", str(STATUS_FD)]
    if as_root and job.identity is not None:
        assert isolation.setpriv is not None
        ids = str(job.identity.uid), str(job.identity.gid)
        line += ["--", isolation.setpriv, "--reuid", ids[0], "--regid", ids[1]]
        line += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return [*line, "--", SHELL, "-c", ENV_SCRIPT, "fabriek-job"]


def _ancestors(path: str, line: list[str], bound: list[str], hide: tuple[str, ...]) -> list[str]:
    """`--dir` for each directory above `path` that the sandbox does not have yet: bubblewrap
    running as root would make them 0700 root, which the job's uid could not pass through."""
    made: list[str] = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        here = "/" + "/".join(parts[: i + 1])
        in_hidden = any(_under(here, h) for h in hide)
        exists = here in ("/tmp", "/var/tmp") or here in line or here in hide
        if exists or (any(_under(here, r) for r in bound) and not in_hidden):
            continue
        made += ["--perms", "0755", "--dir", here]
    return made


def hidden(home: Path, isolation: Isolation) -> tuple[str, ...]:
    """FABRIEK_HOME, where a read-only path of the sandbox holds it (a home under /opt, or in the
    checkout the server's Python runs from): an empty directory inside instead."""
    roots = [*SYSTEM_PATHS, *python_paths(), *isolation.ro_paths]
    home_s = str(home.resolve())
    return (home_s,) if any(_under(home_s, r) for r in roots) else ()


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def gpu_devices(minors: tuple[int, ...], dev: str = "/dev") -> tuple[str, ...]:
    """The device nodes a job with the GPUs of these minor numbers needs: its own GPUs' and the
    driver's shared ones (never another job's GPU)."""
    if not minors:
        return ()
    shared = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")
    nodes = [f"{dev}/nvidia{m}" for m in minors] + [f"{dev}/{s}" for s in shared]
    return tuple(n for n in nodes if os.path.exists(n))
