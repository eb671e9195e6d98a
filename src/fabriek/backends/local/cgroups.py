"""A job's cgroup: its memory, pids and CPU limits enforced by the kernel, and a way to reach
every process it started, also one that left its session (setsid) or was orphaned.

Standard library only: the job supervisor (shim.py, run as `python -I -S`) imports it. The server
finds the hierarchy once (`find`) and hands the supervisor a plan (`Plan.as_dict`); the
supervisor makes the job's cgroup, puts the job's first process in it before that process execs,
and removes the cgroup when the job has ended.

cgroup v1 (one hierarchy per controller: memory, pids, cpu, cpuacct) and v2 (one hierarchy, the
controllers enabled for fabriek's subtree) are both handled: what a machine has decides.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

NEEDED = ("memory", "pids", "cpu")  # cpuacct too on v1, for the job's CPU time
PARENT = "fabriek"  # every job's cgroup is PARENT/<job key> in each hierarchy
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where the job cgroups go: v1: controller -> its mount point; v2: "" -> the mount."""

    version: int
    mounts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"version": self.version, "mounts": dict(self.mounts)}


def find(mountinfo: str = "/proc/self/mountinfo") -> tuple[Hierarchy | None, str]:
    """The cgroup hierarchy job limits can be enforced with, and, where there is none, why
    (in words, for `fabriek up`). v1 controllers are used where all of NEEDED are mounted
    as v1 (a hybrid machine keeps them there); else v2 where its root offers them."""
    v1: dict[str, str] = {}
    v2: str | None = None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return None, f"cannot read {mountinfo}: {exc.strerror}"
    for line in lines:
        left, _, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if len(parts) < 5 or len(rest) < 3:
            continue
        point, fstype, options = parts[4], rest[0], rest[2].split(",")
        if fstype == "cgroup":
            for name in (*NEEDED, "cpuacct"):
                if name in options:
                    v1.setdefault(name, point)
        elif fstype == "cgroup2" and v2 is None:
            v2 = point
    if all(name in v1 for name in NEEDED):
        return Hierarchy(1, v1), ""
    if v2 is not None:
        try:
            with open(os.path.join(v2, "cgroup.controllers")) as f:
                offered = f.read().split()
        except OSError as exc:
            return None, f"cannot read {v2}/cgroup.controllers: {exc.strerror}"
        missing = [c for c in NEEDED if c not in offered]
        if not missing:
            return Hierarchy(2, {"": v2}), ""
        return None, f"cgroup v2 at {v2} lacks the {', '.join(missing)} controller(s)"
    missing = [c for c in NEEDED if c not in v1]
    return None, f"no cgroup hierarchy with the {', '.join(missing)} controller(s) is mounted"


def prepare(hierarchy: Hierarchy) -> str:
    """Make fabriek's parent cgroup(s) and, on v2, enable the controllers for its subtree.
    Returns "" when job cgroups can be made, else why not."""
    try:
        for mount in sorted(set(hierarchy.mounts.values())):
            parent = os.path.join(mount, PARENT)
            os.makedirs(parent, exist_ok=True)
            if hierarchy.version == 2:
                wanted = " ".join("+" + c for c in NEEDED)
                _write(os.path.join(mount, "cgroup.subtree_control"), wanted)
                _write(os.path.join(parent, "cgroup.subtree_control"), wanted)
    except OSError as exc:
        return f"cannot make fabriek's cgroup: {exc.strerror} ({exc.filename})"
    return ""


def key_for(job_dir: str) -> str:
    """The name of a job's cgroup: its directory's name and a digest of its whole path, so that
    two servers on one machine (two homes, the same job ids) never share one."""
    import hashlib

    path = os.path.abspath(job_dir)
    return f"job-{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class JobCgroup:
    """One job's cgroup (v1: one directory in each controller's hierarchy)."""

    def __init__(self, plan: dict[str, object], key: str) -> None:
        self.version = int(plan["version"])  # type: ignore[call-overload]
        mounts: dict[str, str] = plan["mounts"]  # type: ignore[assignment]
        self.dirs = {name: os.path.join(mount, PARENT, key) for name, mount in mounts.items()}

    # --- made by the supervisor, before the job starts ------------------------------------------
    def create(self, *, memory_bytes: int, pids_max: int, cpus: int) -> None:
        """Make the cgroup with the job's limits. Raises OSError where that fails."""
        for path in set(self.dirs.values()):
            os.makedirs(path, exist_ok=True)
        quota = cpus * CPU_PERIOD_US
        if self.version == 1:
            memory = self.dirs["memory"]
            _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
            swap = os.path.join(memory, "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):  # no swap beyond the limit either
                _write(swap, str(memory_bytes))
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(pids_max))
            _write(os.path.join(self.dirs["cpu"], "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(self.dirs["cpu"], "cpu.cfs_quota_us"), str(quota))
        else:
            path = self.dirs[""]
            _write(os.path.join(path, "memory.max"), str(memory_bytes))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), "0")
            _write(os.path.join(path, "pids.max"), str(pids_max))
            _write(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")

    def join(self) -> None:
        """Put the calling process in the cgroup (in the job's first process, before its exec:
        everything it starts is in the cgroup from its first instruction)."""
        pid = str(os.getpid())
        for path in set(self.dirs.values()):
            _write(os.path.join(path, "cgroup.procs"), pid)

    # --- while and after the job runs -----------------------------------------------------------
    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in set(self.dirs.values()):
            try:
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split())
            except (OSError, ValueError):
                continue
        return found

    def signal(self, signum: int, spare: tuple[int, ...] = ()) -> None:
        """Send `signum` to every process in the cgroup but those in `spare`."""
        for pid in self.pids() - set(spare):
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_all(self, deadline_s: float = 5.0) -> bool:
        """SIGKILL everything in the cgroup until it is empty (a fork bomb refills it until its
        pids limit); True once empty."""
        if self.version == 2:
            try:
                _write(os.path.join(self.dirs[""], "cgroup.kill"), "1")
            except OSError:
                pass  # a kernel before 5.14: kill them one by one below
        end = time.monotonic() + deadline_s
        while True:
            left = self.pids()
            if not left:
                return True
            if time.monotonic() > end:
                return False
            self.signal(signal.SIGKILL)
            time.sleep(0.01)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the job for exceeding its memory limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = _read(os.path.join(self.dirs["memory" if self.version == 1 else ""], name))
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the job ran, reaped or not; None where unknown."""
        try:
            if self.version == 1:
                where = self.dirs.get("cpuacct")
                return int(_read(os.path.join(where, "cpuacct.usage"))) / 1e9 if where else None
            for line in _read(os.path.join(self.dirs[""], "cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def peak_bytes(self) -> int | None:
        """The most memory the job held at once (its cgroup's peak: resident memory and the page
        cache it caused, what its limit counts); None where the kernel does not tell."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(os.path.join(self.dirs["memory" if self.version == 1 else ""], name)))
        except (OSError, ValueError):
            return None

    def remove(self, deadline_s: float = 5.0) -> bool:
        """Remove the cgroup once its processes are gone; True when removed (or never made)."""
        end = time.monotonic() + deadline_s
        for path in set(self.dirs.values()):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > end:
                        return False
                    time.sleep(0.01)  # its last processes are being reaped
        return True
