"""The local backend: jobs as real processes on this machine, each under its own supervisor (shim.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from fabriek.backends.base import Handle, LaunchSpec, Observation, Phase, Usage
from fabriek.backends.local import shim
from fabriek.backends.local.gpus import GpuInfo
from fabriek.core.jobs import JobState, Resources
from fabriek.scheduling.snapshot import Capacity

log = logging.getLogger(__name__)

SHIM = Path(shim.__file__)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        *,
        jobs_dir: Path,
        resources: Resources,
        gpus: list[GpuInfo],
        kill_grace_seconds: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.resources = resources
        self.gpus = gpus
        self.kill_grace_seconds = kill_grace_seconds
        self.on_change = on_change  # called from a watcher thread when a supervisor exits
        jobs_dir.mkdir(parents=True, exist_ok=True)

    def capacity(self) -> Capacity:
        resources = Resources(self.resources.cpus, self.resources.memory_bytes, len(self.gpus))
        return Capacity(resources, tuple(g.index for g in self.gpus))

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)

    # --- submit -------------------------------------------------------------------------------
    def submit(self, spec: LaunchSpec) -> Handle:
        job_dir = self.job_dir(spec.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        handle: Handle = {"dir": str(job_dir)}
        # marshal: the supervisor reads it before the job starts, and json would cost it an import.
        # Not fsync'd: after a power cut nothing of this machine's jobs survives anyway.
        spec_file = str(job_dir / "spec.marshal")
        shim.write_atomic(spec_file, marshal.dumps(self._spec_file(spec)), durable=False)
        try:
            # The marker makes the launch happen at most once, whatever crashes in between.
            os.close(os.open(job_dir / "launched", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            log.info("job %s was launched before; adopting it", spec.job_id)
            return handle
        lock_fd = os.open(job_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with open(job_dir / "shim.log", "ab") as shim_log:
                proc = subprocess.Popen(
                    # -I -S: no user site, no site-packages; the supervisor needs the standard library only.
                    [sys.executable, "-I", "-S", str(SHIM), str(job_dir), str(lock_fd)],
                    stdin=subprocess.DEVNULL,
                    stdout=shim_log,
                    stderr=shim_log,
                    pass_fds=(lock_fd,),
                    start_new_session=True,  # survives the server, and a Ctrl-C in its terminal
                )
        finally:
            os.close(lock_fd)  # the supervisor's inherited copy keeps the lock
        shim.write_json_atomic(
            str(job_dir / "shim.json"),
            {"pid": proc.pid, "pid_start": shim.proc_start_ticks(proc.pid)},
            durable=False,
        )
        threading.Thread(
            target=self._watch, args=(proc,), daemon=True, name=f"watch-{spec.job_id}"
        ).start()
        return handle

    def _spec_file(self, spec: LaunchSpec) -> dict[str, object]:
        # The server's environment (PATH, locale, ...) minus its own settings and secrets, then the
        # job's variables, then ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIEK_")}
        env.update(spec.env)
        env.update(
            FABRIEK_JOB_ID=str(spec.job_id),
            FABRIEK_JOB_NAME=spec.name,
            FABRIEK_CPUS=str(spec.resources.cpus),
            FABRIEK_GPUS=str(spec.resources.gpus),
            # A job that asked for no GPU sees none, so it cannot take another job's.
            CUDA_VISIBLE_DEVICES=",".join(self._gpu_uuid(i) for i in spec.gpu_ids),
        )
        return {
            "argv": spec.argv,
            "env": env,
            "time_limit_s": spec.time_limit_s,
            "kill_grace_seconds": self.kill_grace_seconds,
            "workdir_archive": str(spec.workdir_archive) if spec.workdir_archive else None,
        }

    def _gpu_uuid(self, index: int) -> str:
        return next((g.uuid for g in self.gpus if g.index == index), str(index))

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()  # reaps the supervisor, then lets the controller look at once
        self.on_change()

    # --- observe ------------------------------------------------------------------------------
    def poll(self, handles: Mapping[int, Handle]) -> dict[int, Observation]:
        return {job_id: self._observe(Path(h["dir"])) for job_id, h in handles.items()}

    def _observe(self, job_dir: Path) -> Observation:
        if not (job_dir / "launched").exists():
            return Observation(Phase.LOST, reason="the job was never launched")
        alive = _lock_held(job_dir / "lock")
        # Read the result only after the liveness check: a supervisor writes it before it exits.
        result = _read_json(job_dir / "result.json")
        started = _read_json(job_dir / "started.json")
        started_at = _parse_time(started.get("started_at")) if started else None
        if result:
            return _finished(result, started_at)
        if alive:
            return Observation(Phase.RUNNING if started else Phase.STARTING, started_at=started_at)
        self._kill_orphan(started)
        return Observation(
            Phase.LOST, started_at=started_at, reason="the job's supervisor ended without a result"
        )

    @staticmethod
    def _kill_orphan(started: dict[str, object] | None) -> None:
        """A supervisor that died hard may leave its job running: end it, if it is still that process."""
        if not started:
            return
        pid = started.get("pid")
        if isinstance(pid, int) and shim.proc_start_ticks(pid) == started.get("pid_start"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # --- cancel -------------------------------------------------------------------------------
    def cancel(self, job_id: int, handle: Handle) -> None:
        job_dir = Path(handle["dir"])
        (
            job_dir / "cancel"
        ).touch()  # noticed by the supervisor within a second even if the signal is lost
        info = _read_json(job_dir / "shim.json")
        pid = info.get("pid") if info else None
        # Signal only the very process we started: a pid alone may have been reused since.
        if isinstance(pid, int) and shim.proc_start_ticks(pid) == info.get("pid_start"):  # type: ignore[union-attr]
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # --- files --------------------------------------------------------------------------------
    def log_path(self, job_id: int, handle: Handle | None) -> Path | None:
        return self.job_dir(job_id) / "output.log"

    def output_dir(self, job_id: int, handle: Handle | None) -> Path | None:
        return self.job_dir(job_id) / "output"


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we just took it
    return False


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def _parse_time(value: object) -> datetime | None:
    """The supervisor writes seconds since the epoch."""
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def _finished(result: dict[str, object], started_at: datetime | None) -> Observation:
    usage = result.get("usage")
    return Observation(
        Phase.FINISHED,
        started_at=started_at,
        finished_at=_parse_time(result.get("finished_at")),
        outcome=JobState(str(result["outcome"])),
        exit_code=result.get("exit_code"),  # type: ignore[arg-type]
        signal=result.get("signal"),  # type: ignore[arg-type]
        reason=result.get("reason"),  # type: ignore[arg-type]
        usage=Usage(**usage) if isinstance(usage, dict) else None,
    )


def detect_resources(cpus: int | None, memory_bytes: int | None) -> Resources:
    """The machine's CPUs and memory, less what the system keeps, unless the operator declared them."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    if memory_bytes is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_bytes = total - min(total // 10, 4 * 1024**3)
    return Resources(cpus=cpus, memory_bytes=memory_bytes, gpus=0)
