"""The supervisor's side of a job's sandbox: start bubblewrap with the command line the server
planned (backends/local/sandbox.py), inside the job's cgroup, and afterwards tell how the job
ended and leave nothing of it behind.

Standard library only: imported by the job supervisor (shim.py, `python -I -S`) when it starts a
sandboxed job.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
from typing import Any

from fabriek.backends.local.cgroups import JobCgroup, key_for

STATUS_FD = 3  # bubblewrap's --json-status-fd, as the plan's command line names it
ENV_FD = 4  # the job's environment, which bubblewrap copies into the sandbox (--ro-bind-data)
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class Sandbox:
    """One job's sandbox. `plan`: {"argv": bubblewrap's command line up to the job's argv,
    "unshare_net": give it an empty network namespace first (`none` as root), "cgroup": a
    cgroups.Hierarchy as a dict or None, "memory_bytes", "pids_max", "cpus"}."""

    def __init__(self, plan: dict[str, Any], job_dir: str) -> None:
        self.plan = plan
        self.stderr_path = os.path.join(job_dir, "stderr.log")
        self.cgroup = JobCgroup(plan["cgroup"], key_for(job_dir)) if plan.get("cgroup") else None
        self.pid: int | None = None  # bubblewrap's, our child
        self.init_pid: int | None = None  # the sandbox's pid 1, as this machine numbers it
        self.pid_ns: int | None = None  # the inode of its PID namespace
        self._status: int | None = None
        self._docs: list[dict[str, Any]] = []
        self._buffer = b""

    def start(self, argv: list[str], env: dict[str, str], out: int, err: int) -> int:
        """Start the job; returns bubblewrap's pid. Raises OSError where its cgroup cannot be
        made; anything later (bubblewrap's own failure, a command not found) shows in `outcome`."""
        if self.cgroup is not None:
            self.cgroup.create(
                memory_bytes=int(self.plan["memory_bytes"]),
                pids_max=int(self.plan["pids_max"]),
                cpus=int(self.plan["cpus"]),
            )
        environment = _environment_file(env)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._child(write_end, environment, [*self.plan["argv"], *argv], out, err)
        os.close(write_end)
        os.close(environment)
        self.pid, self._status = pid, read_end
        first = self._next_doc(timeout_s=30.0)  # bubblewrap made the namespaces (milliseconds)
        if first is not None:
            self.init_pid = first.get("child-pid")
            self.pid_ns = first.get("pid-namespace")
        return pid

    def _child(self, status: int, environment: int, argv: list[str], out: int, err: int) -> None:
        """In the forked child: join the cgroup, take an empty network namespace where asked,
        and become bubblewrap, with PATH alone (the job's environment is on ENV_FD). Never
        returns."""
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.dup2(status, STATUS_FD)
            os.dup2(environment, ENV_FD)
            signal.set_wakeup_fd(-1)
            for signum in _RESET_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.setpgid(0, 0)  # signals for the supervisor's group never reach it
            if self.cgroup is not None:
                self.cgroup.join()
            _new_session_keyring()
            if self.plan.get("unshare_net"):
                _unshare_net()
            os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except BaseException as exc:
            try:
                os.write(2, f"bwrap: fabriek could not start the sandbox: {exc}\n".encode())
            finally:
                os._exit(127)

    def _next_doc(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON document bubblewrap wrote on its status fd (one per line)."""
        assert self._status is not None
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._status], [], [], timeout_s)
            if not ready:
                return None
            chunk = os.read(self._status, 4096)
            if not chunk:
                break
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            doc = json.loads(line) if line.strip() else None
        except ValueError:
            return None
        if isinstance(doc, dict):
            self._docs.append(doc)
            return doc
        return None

    # --- while it runs ----------------------------------------------------------------------
    def processes(self) -> list[int]:
        """The job's processes: everything in its PID namespace, as this machine numbers them."""
        if self.pid_ns is None:
            return []
        mine = f"pid:[{self.pid_ns}]"
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if os.readlink(f"/proc/{entry.name}/ns/pid") == mine:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def signal(self, signum: int) -> None:
        """Send `signum` to every process of the job, also one that left its session. SIGKILL
        goes to the sandbox's pid 1 too, which ends its whole namespace. Where bubblewrap never
        said which namespace is the job's, its cgroup tells (bubblewrap itself spared)."""
        if self.pid_ns is None and self.cgroup is not None:
            spare = (self.pid,) if self.pid is not None and signum != signal.SIGKILL else ()
            self.cgroup.signal(signum, spare=spare)
            return
        for pid in self.processes():
            if pid == self.init_pid and signum != signal.SIGKILL:
                continue  # bubblewrap's init ignores it anyway
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def cpu_seconds(self) -> float:
        """CPU time of the job's processes so far (its cgroup's, else its namespace's)."""
        if self.cgroup is not None:
            seconds = self.cgroup.cpu_seconds()
            if seconds is not None:
                return seconds
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.processes():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(v) for v in fields[11:15])
            except (OSError, IndexError, ValueError):
                continue
        return total / tick

    # --- once bubblewrap has exited ---------------------------------------------------------
    def outcome(self, code: int) -> tuple[int | None, int | None, str | None]:
        """(exit code, signal, why it never started) from bubblewrap's exit `code` (as
        os.waitstatus_to_exitcode gives it) and its status documents. bubblewrap reports a job
        killed by signal N as 128+N, as shells do: read back as the signal."""
        while self._next_doc(timeout_s=0.0) is not None:
            pass
        if self._status is not None:
            os.close(self._status)
            self._status = None
        ended = next((d["exit-code"] for d in self._docs if "exit-code" in d), None)
        if ended in (126, 127) and self.plan.get("argv_zero"):
            said = self._complaint(f"fabriek-job: 1: exec: {self.plan['argv_zero']}: ")
            if said is not None:  # the shell that becomes the job could not exec the command
                return 127, None, said
        if isinstance(ended, int):
            if 128 < ended <= 128 + 64:
                return None, ended - 128, None
            return ended, None, None
        if code < 0:
            return None, -code, None
        said = self._complaint("bwrap: ")
        if said is None:
            return code, None, "the sandbox could not be made"
        return code, None, said

    def _complaint(self, prefix: str) -> str | None:
        """The words after `prefix` on stderr's last line, if it starts so (bubblewrap's
        `bwrap: execvp train.py: No such file or directory`): the error alone."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        if not tail or not tail[-1].startswith(prefix):
            return None
        words = tail[-1].removeprefix(prefix)
        if prefix == "bwrap: " and not words.startswith("execvp "):
            return words
        return words.rsplit(": ", 1)[-1]

    def end(self) -> tuple[bool, float | None, int | None]:
        """End what is left of the job, remove its cgroup. Returns (killed for exceeding its
        memory, its CPU seconds and peak memory where the cgroup counted them)."""
        self.signal(signal.SIGKILL)
        if self.cgroup is None:
            return False, None, None
        self.cgroup.kill_all()
        oom, cpu, peak = (
            self.cgroup.oom_killed(),
            self.cgroup.cpu_seconds(),
            self.cgroup.peak_bytes(),
        )
        self.cgroup.remove()
        return oom, cpu, peak


def _environment_file(env: dict[str, str]) -> int:
    """A descriptor of `export NAME='value'` lines (each value shell-quoted), read from its start.
    Names are the job's checked ones (core.jobs.ENV_NAME) and ours."""
    import shlex

    text = "".join(
        f"export {name}={shlex.quote(value)}\n"
        for name, value in env.items()
        if _NAME.fullmatch(name)  # checked at submission; never a line the shell would misread
    )
    fd = os.memfd_create("fabriek-env", os.MFD_CLOEXEC)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# keyctl(2)'s system call number, per machine; KEYCTL_JOIN_SESSION_KEYRING with no name: a new,
# empty session keyring of the calling process's own.
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 271, "s390x": 280, "riscv64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1


def _new_session_keyring() -> None:
    """Kernel keyrings are not namespaced: without this, every job shares the supervisor's
    session keyring (the server's keys, and the keys other tenants' jobs left there)."""
    import ctypes  # the fork server imported it already (shim._preload)

    machine = os.uname().machine
    number = _SYS_KEYCTL.get(machine)
    if number is None:
        raise OSError(f"no keyctl system call known for {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")


def _unshare_net() -> None:
    """A new network namespace for the calling process, with nothing up (needs root)."""
    unshare = getattr(os, "unshare", None)  # Python 3.12
    if unshare is not None:
        unshare(CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), "unshare(CLONE_NEWNET)")
