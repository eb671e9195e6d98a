"""The job supervisor: one per job, detached from the server, standard library only.

Started as `python -I -S shim.py JOB_DIR LOCK_FD`, or forked by the same file run as a fork server
(`shim.py --forkserver SOCKET_FD`, see `forkserver`). It imports only built-in
modules before the job has started (launch latency is Python's start-up plus a fork), reads its orders
from JOB_DIR/spec.marshal, and imports json and tarfile only when it needs them. It holds an exclusive flock on
JOB_DIR/lock for its whole life (the fd is inherited, locked before it was started), so anyone can tell
whether a job's supervisor still lives without trusting pids. It unpacks the workdir, starts the command
in its own process group, enforces the time limit (SIGTERM, grace, SIGKILL), forwards a cancel, and
writes JOB_DIR/result.json atomically before it exits. The server may die and come back meanwhile:
the job does not notice.

Once the job runs, it meters its energy (fabriek.metering, imported only then) and samples it
while it supervises.

Files it writes in JOB_DIR: started.json, result.json, stdout.log, stderr.log, log.index (the logs'
sizes over time, see backends.base.LOG_INDEX), energy.jsonl, work/, output/.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import stat
import sys
import time
from typing import Any

# Python ignores these at start-up and an exec keeps ignored signals ignored: give the job the defaults.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def write_atomic(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write a whole file or nothing: readers see the old file, or the complete new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, data: dict[str, Any], *, durable: bool = True) -> None:
    import json

    write_atomic(path, json.dumps(data).encode(), durable=durable)


class LogIndex:
    """Appends `UNIX_TIME STDOUT_BYTES STDERR_BYTES` to JOB_DIR/log.index when the logs have
    grown (asked at most every second or so), so that `logs --since` finds where a time begins."""

    def __init__(self, job_dir: str) -> None:
        self.dir = job_dir
        self.last: tuple[int, int] = (0, 0)

    def note(self) -> None:
        sizes = tuple(_size(os.path.join(self.dir, f"{s}.log")) for s in ("stdout", "stderr"))
        if sizes == self.last:
            return
        self.last = sizes  # type: ignore[assignment]
        line = f"{time.time():.3f} {sizes[0]} {sizes[1]}\n".encode()
        append_index(os.path.join(self.dir, "log.index"), line)


def append_index(path: str, line: bytes) -> None:
    """Append `line` to the job-writable log index, unless the job replaced it: a link is not
    followed, and a FIFO (opened without blocking) fails or is not written, where opening it
    for appending blocked the supervisor for ever (and the job's time limit with it)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# src/, where fabriek.core.workdir_archive imports from (we run as `python -I -S`).
_PACKAGE_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
REASON_MAX = 300  # characters of a reason written to result.json (a job's stored reason)


def _size_words(n: int) -> str:
    """2147483648 -> 2G: a memory limit as the user wrote it (binary units)."""
    for unit in ("T", "G", "M", "K"):
        size = 1 << {"T": 40, "G": 30, "M": 20, "K": 10}[unit]
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n} bytes"


def bounded(text: str, limit: int = REASON_MAX) -> str:
    """`text`, cut to `limit` characters: what goes into a job's stored reason stays short."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Stop(Exception):
    """Stop before the command started: the job ends with `outcome` and `reason`."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


class _CpuTime:
    """This process's CPU seconds since it was made (its own work for the job: the unpacking)."""

    def __init__(self) -> None:
        self.start = time.process_time()

    def __call__(self) -> float:
        return time.process_time() - self.start


def _usage(started: float, cpu_s: float) -> dict[str, float]:
    return {"wall_s": time.monotonic() - started, "cpu_s": cpu_s, "max_rss_bytes": 0}


class Supervisor:
    def __init__(self, job_dir: str) -> None:
        self.dir = job_dir
        with open(self.path("spec.marshal"), "rb") as f:
            self.spec: dict[str, Any] = marshal.load(f)
        self.cancel_requested = False
        self.sandbox: Any = None  # a backends.local.jail.Sandbox, once the job runs in one
        ids = self.spec.get("ids")  # [uid, gid]: the job runs as its project
        self.ids: tuple[int, int] | None = (int(ids[0]), int(ids[1])) if ids else None
        self.deadline = float("inf")  # set when the job's time starts (run)
        self._next_look = 0.0
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_cancel)
        signal.signal(signal.SIGINT, self._on_cancel)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _on_cancel(self, _signum: int, _frame: Any) -> None:
        self.cancel_requested = True

    def _cancel_marked(self) -> bool:
        return self.cancel_requested or os.path.exists(self.path("cancel"))

    def run(self) -> None:
        workdir, outdir = self.path("work"), self.path("output")
        self._own_dir(outdir)
        # The job's time starts here, before its workdir is unpacked: unpacking is its first
        # step, charged and bounded by its time limit like the rest, and a cancel stops it.
        started_at, started = time.time(), time.monotonic()
        self._started_at = started_at
        self.deadline = started + self.spec["time_limit_s"]
        unpacking = _CpuTime()
        try:
            self._unpack(workdir, started_at)
        except _Stop as stop:
            self._finish(stop.outcome, reason=stop.reason, usage=_usage(started, unpacking()))
            return
        except Exception as exc:  # anything means no usable workdir
            reason = f"could not unpack the workdir: {bounded(str(exc))}"
            self._finish("failed", reason=reason, usage=_usage(started, unpacking()))
            return
        if self._cancel_marked():
            self._finish(
                "cancelled",
                reason="cancelled before it started",
                usage=_usage(started, unpacking()),
            )
            return
        argv: list[str] = self.spec["argv"]
        env = {**self.spec["env"], "FABRIEK_OUTPUT_DIR": outdir, "FABRIEK_WORKDIR": workdir}
        env.setdefault("HOME", workdir)
        os.environ["PATH"] = env.get("PATH", os.defpath)  # posix_spawnp searches our own PATH
        os.chdir(workdir)
        out, log = self._open_log("stdout.log"), self._open_log("stderr.log")
        if self.spec.get("sandbox"):
            try:
                pid = self._spawn_sandboxed(argv, env, out, log)
            except _Stop as stop:
                self._finish(stop.outcome, exit_code=127, reason=stop.reason)
                return
            finally:
                os.close(out)
                os.close(log)
            self._supervise(pid, started, self._start_meter(pid), unpacking())
            return
        try:
            pid = os.posix_spawnp(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setpgroup=0,  # its own process group: signals reach everything it starts
                setsigdef=_RESET_SIGNALS,
                setsigmask=(),
            )
        except OSError as exc:
            os.write(log, f"fabriek: cannot start {argv[0]!r}: {exc.strerror}\n".encode())
            self._finish(
                "failed", exit_code=127, reason=f"cannot start the command: {exc.strerror}"
            )
            return
        finally:
            os.close(out)
            os.close(log)
        write_json_atomic(
            self.path("started.json"),
            {"pid": pid, "pid_start": proc_start_ticks(pid), "started_at": started_at},
            durable=False,
        )
        self._supervise(pid, started, self._start_meter(pid), unpacking())

    def _own_dir(self, path: str) -> None:
        """A directory of the job's, the project's own (mode 0700) where it runs as its project."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        if self.ids is not None:
            os.chown(path, *self.ids, follow_symlinks=False)
            os.chmod(path, 0o700, follow_symlinks=False)

    def _open_log(self, name: str) -> int:
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        if self.ids is not None:
            os.fchown(fd, *self.ids)
        return fd

    def _as_project(self) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def switched() -> Any:
            if self.ids is None:
                yield
                return
            groups = os.getgroups()
            os.setgroups([self.ids[1]])  # root's groups would open what root's group may write
            os.setegid(self.ids[1])
            os.seteuid(self.ids[0])
            try:
                yield
            finally:
                os.seteuid(0)
                os.setegid(0)
                os.setgroups(groups)

        return switched()

    def _spawn_sandboxed(self, argv: list[str], env: dict[str, str], out: int, log: int) -> int:
        """Start the job in its sandbox (backends/local/jail.py); the pid of bubblewrap, our
        child. Raises _Stop when the sandbox could not be made."""
        sys.path.insert(0, _PACKAGE_ROOT)
        from fabriek.backends.local.jail import Sandbox

        self.sandbox = Sandbox(self.spec["sandbox"], self.dir)
        try:
            pid = self.sandbox.start(argv, env, out, log)
        except OSError as exc:
            self.sandbox = None
            raise _Stop("failed", f"could not make the job's sandbox: {exc}") from None
        write_json_atomic(
            self.path("started.json"),
            {"pid": pid, "pid_start": proc_start_ticks(pid), "started_at": self._started_at},
            durable=False,
        )
        return pid

    def _start_meter(self, pgid: int) -> Any:
        """The job's energy meter (fabriek.metering), imported only now that the job runs: it
        costs the launch nothing. Metering trouble is logged and never stops the job."""
        orders = self.spec.get("meter")
        if not orders:
            return None
        try:
            sys.path[:0] = orders["sys_path"]
            from fabriek.metering.meter import Estimates, job_meter

            return job_meter(
                self.dir,
                pgid=pgid,
                gpu_indices=orders["gpu_indices"],
                gpu_source=orders["gpu_source"],
                memory_bytes=orders["memory_bytes"],
                rapl_root=orders.get("rapl_root", "/sys/class/powercap"),
                sample_every_s=orders.get("sample_every_s", 15.0),
                estimates=Estimates(**orders.get("estimates", {})),
                cpu_seconds=self.sandbox.cpu_seconds if self.sandbox is not None else None,
            )
        except Exception as exc:
            print(f"fabriek: energy metering off for this job: {exc!r}", file=sys.stderr)
            return None

    def _unpack(self, workdir: str, started_at: float) -> None:
        """Unpack the workdir archive, if any, with the check the upload passed
        (fabriek.core.workdir_archive): it extracts only what it checked. The job counts as
        running meanwhile (started.json, without a pid yet). Raises _Stop on a cancel or at the
        time limit, noticed before each entry."""
        self._own_dir(workdir)
        archive = self.spec.get("workdir_archive")
        if not archive:
            return
        write_json_atomic(self.path("started.json"), {"started_at": started_at}, durable=False)
        sys.path.insert(0, _PACKAGE_ROOT)  # imported only now: tarfile is slow to import
        from fabriek.core import workdir_archive

        limits = workdir_archive.DEFAULT_LIMITS
        if self.spec.get("workdir_limits"):
            max_bytes, max_entries = self.spec["workdir_limits"]
            limits = workdir_archive.Limits(max_bytes=max_bytes, max_entries=max_entries)
        try:
            # Opened as the supervisor, extracted as the project: what it unpacks is the
            # project's, and lands only where the project may write.
            # From inside the workdir: the project's uid may not pass through the directories
            # above it (the server's home).
            os.chdir(workdir)
            with open(archive, "rb") as raw, self._as_project():
                workdir_archive.unpack(raw, ".", limits, progress=self._unpacking)
        except workdir_archive.Refused as exc:
            raise _Stop("failed", f"could not unpack the workdir: {exc}") from None

    def _unpacking(self) -> None:
        """Called before each entry is read or extracted: stop for a cancel or the time limit."""
        if self.cancel_requested:  # SIGTERM: our handler only sets this
            raise _Stop("cancelled", "cancelled while its workdir was unpacked")
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + 0.1  # a cancel file or the clock: looked at ten times a second
        if os.path.exists(self.path("cancel")):
            raise _Stop("cancelled", "cancelled while its workdir was unpacked")
        if now >= self.deadline:
            raise _Stop(
                "timed_out",
                f"ran past its time limit of {self.spec['time_limit_s']}s while its workdir "
                "was unpacked",
            )

    def _supervise(
        self, pid: int, started: float, meter: Any = None, unpack_cpu_s: float = 0.0
    ) -> None:
        """Wait for the job, stopping it for a cancel or at its time limit (counted from
        `started`, before its workdir was unpacked: `unpack_cpu_s` is added to its CPU time)."""
        pidfd = os.pidfd_open(pid)
        deadline = self.deadline
        grace = float(self.spec["kill_grace_seconds"])
        outcome: str | None = None  # set once we start stopping the job: cancelled or timed_out
        kill_at: float | None = None
        index = LogIndex(self.dir)
        while True:
            index.note()
            now = time.monotonic()
            if outcome is None and self._cancel_marked():
                outcome, kill_at = "cancelled", now + grace
                self._signal_job(pid, signal.SIGTERM)
            elif outcome is None and now >= deadline:
                outcome, kill_at = "timed_out", now + grace
                self._signal_job(pid, signal.SIGTERM)
            elif kill_at is not None and now >= kill_at:
                self._signal_job(pid, signal.SIGKILL)
                kill_at = None
            timers = [t for t in (deadline if outcome is None else None, kill_at) if t is not None]
            # Wake at least every second: that is how a cancel file written after a crash is noticed.
            timeout = min([1.0] + [max(0.0, t - now) for t in timers])
            if meter is not None:
                timeout = min(timeout, meter.due())
            ready, _, _ = select.select([pidfd, self.wake_r], [], [], timeout)
            if self.wake_r in ready:
                os.read(self.wake_r, 512)
            if pidfd in ready:
                break
            if meter is not None:
                meter = self._sample(meter)
        os.close(pidfd)
        index.note()
        if meter is not None:  # the last interval, while the group's processes can still be read
            try:
                meter.cpu.sample()
            except Exception as exc:
                print(f"fabriek: the last CPU sample failed: {exc!r}", file=sys.stderr)
        # The main process has exited but is not reaped yet, so its process group id cannot be reused:
        # end whatever it left behind in its group, then reap it with its resource usage.
        self._signal_group(pid, signal.SIGKILL)
        _, status, rusage = os.wait4(pid, 0)
        wall = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        exit_code, signum = (code, None) if code >= 0 else (None, -code)
        cpu_s = rusage.ru_utime + rusage.ru_stime + unpack_cpu_s
        oom, max_rss = False, rusage.ru_maxrss * 1024
        if self.sandbox is not None:
            exit_code, signum, start_error = self.sandbox.outcome(code)
            oom, cgroup_cpu_s, peak = self.sandbox.end()
            if cgroup_cpu_s is not None:  # every process's, also those reaped by no one
                cpu_s = cgroup_cpu_s + unpack_cpu_s
            max_rss = max(max_rss, peak or 0)
            if start_error is not None and outcome is None:
                self._finish(
                    "failed",
                    exit_code=127,
                    reason=f"cannot start the command: {start_error}",
                    usage={"wall_s": wall, "cpu_s": cpu_s, "max_rss_bytes": 0},
                )
                return
        if outcome is None:
            outcome = "succeeded" if exit_code == 0 and not oom else "failed"
        reason = {
            "cancelled": "cancelled on request",
            "timed_out": f"ran past its time limit of {self.spec['time_limit_s']}s",
        }.get(outcome)
        if outcome == "failed":
            reason = (
                f"exited with code {exit_code}" if signum is None else f"killed by signal {signum}"
            )
            if oom:
                reason = (
                    f"out of memory (limit {_size_words(self.spec['sandbox']['memory_bytes'])})"
                )
        energy = None
        if meter is not None:
            try:
                energy = meter.finish(cpu_seconds=cpu_s)
            except Exception as exc:
                print(f"fabriek: the last energy reading failed: {exc!r}", file=sys.stderr)
        self._finish(
            outcome,
            exit_code=exit_code,
            signal=signum,
            reason=reason,
            usage={"wall_s": wall, "cpu_s": cpu_s, "max_rss_bytes": max_rss},
            energy=energy,
        )

    @staticmethod
    def _sample(meter: Any) -> Any:
        try:
            meter.sample()
            return meter
        except Exception as exc:
            print(f"fabriek: energy metering stopped: {exc!r}", file=sys.stderr)
            return None

    def _signal_job(self, pid: int, signum: int) -> None:
        """Signal the job: its process group, or in a sandbox every process of its PID namespace
        (bubblewrap itself spared: it would take the job down with SIGKILL at once)."""
        if self.sandbox is not None:
            self.sandbox.signal(signum)
        else:
            self._signal_group(pid, signum)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, outcome: str, **fields: Any) -> None:
        if isinstance(fields.get("reason"), str):
            fields["reason"] = bounded(fields["reason"])
        write_json_atomic(
            self.path("result.json"), {"outcome": outcome, "finished_at": time.time(), **fields}
        )


def supervise(job_dir: str, lock_fd: int) -> None:
    os.set_inheritable(lock_fd, False)  # the job must not hold our liveness lock
    Supervisor(job_dir).run()


def _preload() -> None:
    """Import once, here, what each supervisor of a sandboxed job needs (the sandbox's side and
    what it imports): forked supervisors then start the job without paying for imports."""
    sys.path.insert(0, _PACKAGE_ROOT)
    try:
        import ctypes  # noqa: F401 - the keyring and `none`'s network namespace
        import json  # noqa: F401

        from fabriek.backends.local import jail  # noqa: F401
    except ImportError as exc:  # a launch imports it again, and says what is wrong there
        print(f"fabriek: cannot preload the sandbox's modules: {exc!r}", file=sys.stderr)


def forkserver(sock_fd: int) -> None:
    """Launch supervisors by forking this small, already started process: a launch then costs a
    fork (about a millisecond) instead of a Python start-up (tens of milliseconds).

    Each message on the socket is a job directory with its locked lock file's descriptor attached;
    the answer is the new supervisor's pid. Ends when the server closes its end.
    """
    import socket

    _preload()
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())  # supervisors are our children
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        except InterruptedError:
            continue
        if not message:
            return  # the server is gone; the supervisors live on without us
        pid = os.fork()
        if pid == 0:
            _become_supervisor(sock, message.decode(), fds[0])
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


def _become_supervisor(sock: Any, job_dir: str, lock_fd: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # our reaper would steal the job's status
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sock.close()
        os.setsid()
        log = os.open(
            os.path.join(job_dir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        supervise(job_dir, lock_fd)
        code = 0
    finally:
        os._exit(code)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    if argv[1] == "--forkserver":
        forkserver(int(argv[2]))
    else:
        supervise(argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
