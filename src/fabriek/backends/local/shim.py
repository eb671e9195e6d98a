"""The job supervisor: one per job, detached from the server, standard library only.

Started by the local backend as `python -I shim.py JOB_DIR LOCK_FD`. It holds an exclusive flock on
JOB_DIR/lock for its whole life (the fd is inherited, locked before it was started), so anyone can tell
whether a job's supervisor still lives without trusting pids. It unpacks the workdir, starts the command
in its own process group, enforces the time limit (SIGTERM, grace, SIGKILL), forwards a cancel, and
writes JOB_DIR/result.json atomically before it exits. The server may die and come back meanwhile:
the job does not notice.

Files it writes in JOB_DIR: started.json, result.json, output.log, work/, output/.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        self.dir = job_dir
        self.spec = json.loads((job_dir / "spec.json").read_text())
        self.cancel_requested = False
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_cancel)
        signal.signal(signal.SIGINT, self._on_cancel)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_cancel(self, _signum: int, _frame: Any) -> None:
        self.cancel_requested = True

    def _cancel_marked(self) -> bool:
        return self.cancel_requested or (self.dir / "cancel").exists()

    def run(self) -> None:
        workdir, outdir = self.dir / "work", self.dir / "output"
        outdir.mkdir(exist_ok=True)
        try:
            self._unpack(workdir)
        except (OSError, tarfile.TarError) as exc:
            self._finish("failed", reason=f"could not unpack the workdir: {exc}")
            return
        if self._cancel_marked():
            self._finish("cancelled", reason="cancelled before it started")
            return
        env = {
            **self.spec["env"],
            "FABRIEK_OUTPUT_DIR": str(outdir),
            "FABRIEK_WORKDIR": str(workdir),
        }
        with open(self.dir / "output.log", "ab", buffering=0) as log:
            try:
                child = subprocess.Popen(
                    self.spec["argv"],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                    close_fds=True,
                )
            except OSError as exc:
                log.write(
                    f"fabriek: cannot start {self.spec['argv'][0]!r}: {exc.strerror}\n".encode()
                )
                self._finish(
                    "failed", exit_code=127, reason=f"cannot start the command: {exc.strerror}"
                )
                return
        started = time.monotonic()
        write_json_atomic(
            self.dir / "started.json",
            {"pid": child.pid, "pid_start": proc_start_ticks(child.pid), "started_at": _now()},
        )
        self._supervise(child, started)

    def _unpack(self, workdir: Path) -> None:
        workdir.mkdir(exist_ok=True)
        archive = self.spec.get("workdir_archive")
        if archive:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(workdir, filter="data")

    def _supervise(self, child: subprocess.Popen[bytes], started: float) -> None:
        pidfd = os.pidfd_open(child.pid)
        deadline = started + self.spec["time_limit_s"]
        grace = float(self.spec["kill_grace_seconds"])
        outcome: str | None = None  # set once we start stopping the job: cancelled or timed_out
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            if outcome is None and self._cancel_marked():
                outcome, kill_at = "cancelled", now + grace
                self._signal_group(child.pid, signal.SIGTERM)
            elif outcome is None and now >= deadline:
                outcome, kill_at = "timed_out", now + grace
                self._signal_group(child.pid, signal.SIGTERM)
            elif kill_at is not None and now >= kill_at:
                self._signal_group(child.pid, signal.SIGKILL)
                kill_at = None
            timers = [t for t in (deadline if outcome is None else None, kill_at) if t is not None]
            # Wake at least every second: that is how a cancel file written after a crash is noticed.
            timeout = min([1.0] + [max(0.0, t - now) for t in timers])
            ready, _, _ = select.select([pidfd, self.wake_r], [], [], timeout)
            if self.wake_r in ready:
                os.read(self.wake_r, 512)
            if pidfd in ready:
                break
        os.close(pidfd)
        # The main process has exited but is not reaped yet, so its process group id cannot be reused:
        # end whatever it left behind in its group, then reap it with its resource usage.
        self._signal_group(child.pid, signal.SIGKILL)
        _, status, rusage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        exit_code, signum = (code, None) if code >= 0 else (None, -code)
        if outcome is None:
            outcome = "succeeded" if code == 0 else "failed"
        reason = {
            "cancelled": "cancelled on request",
            "timed_out": f"ran past its time limit of {self.spec['time_limit_s']}s",
        }.get(outcome)
        if outcome == "failed":
            reason = (
                f"exited with code {exit_code}" if signum is None else f"killed by signal {signum}"
            )
        self._finish(
            outcome,
            exit_code=exit_code,
            signal=signum,
            reason=reason,
            usage={
                "wall_s": wall,
                "cpu_s": rusage.ru_utime + rusage.ru_stime,
                "max_rss_bytes": rusage.ru_maxrss * 1024,
            },
        )

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, outcome: str, **fields: Any) -> None:
        write_json_atomic(
            self.dir / "result.json", {"outcome": outcome, "finished_at": _now(), **fields}
        )


def main(argv: list[str]) -> int:
    job_dir, lock_fd = Path(argv[1]), int(argv[2])
    os.set_inheritable(lock_fd, False)  # the job must not hold our liveness lock
    Supervisor(job_dir).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
