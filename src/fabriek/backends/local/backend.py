"""The local backend: jobs as real processes on this machine, each under its own supervisor (shim.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from fabriek.backends.base import (
    WORK_DIR,
    Capacity,
    Handle,
    LaunchSpec,
    LogStream,
    Observation,
    Phase,
    Usage,
    energy_from,
    read_job_file,
)
from fabriek.backends.local import shim
from fabriek.backends.local.cgroups import JobCgroup, key_for
from fabriek.backends.local.gpus import GpuInfo
from fabriek.backends.local.sandbox import PIDS_MAX_DEFAULT, Isolation, gpu_devices, hidden, probe
from fabriek.backends.local.sandbox import Job as SandboxedJob
from fabriek.backends.local.sandbox import argv as sandbox_argv
from fabriek.core.identity import Identity, Network
from fabriek.core.jobs import FINAL_STATES, JobState, Resources
from fabriek.core.workdir_archive import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

SHIM = Path(shim.__file__)
# Who a sandboxed job runs as when its launch names no project identity (a project not given a
# uid yet): never as root.
NOBODY = Identity(65534, 65534, "")


def meter_sys_path() -> list[str]:
    """Where the supervisor (run with `python -I -S`) finds fabriek.metering and nvidia-ml-py."""
    import importlib.util

    import fabriek

    paths = [str(Path(fabriek.__file__).resolve().parent.parent)]
    found = importlib.util.find_spec("pynvml")
    if found is not None and found.origin:
        paths.append(str(Path(found.origin).resolve().parent))
    return list(dict.fromkeys(paths))


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
        gpu_energy: str = "estimate",
        metering: bool = True,
        sample_every_s: float = 15.0,
        estimates: dict[str, float] | None = None,
        workdir_limits: Limits = DEFAULT_LIMITS,
        sandbox: bool = True,
        sandbox_ro_paths: tuple[str, ...] = (),
        pids_max: int = PIDS_MAX_DEFAULT,
        home: Path | None = None,
    ) -> None:
        """`gpu_energy`: how the supervisors meter GPUs: `nvml` (GPUs NVML found), `estimate`
        (declared fake GPUs: rated power x time), or `fake-counter:WATTS` (tests).
        `workdir_limits`: those the uploads were checked against; the supervisor checks again
        before it unpacks, as part of the job's time. `sandbox`: run each job in its own
        (sandbox.py; what this machine allows is found on first use, see `isolation`), seeing
        `sandbox_ro_paths` read-only beside the system, and nothing of `home`."""
        self.jobs_dir = jobs_dir
        self.workdir_limits = workdir_limits
        self.gpu_energy = gpu_energy
        self.metering = metering
        self.sample_every_s = sample_every_s
        self.estimates = dict(estimates or {})  # fabriek.metering.meter.Estimates' fields
        self._meter_path = meter_sys_path()
        self.resources = resources
        self.gpus = gpus
        self.kill_grace_seconds = kill_grace_seconds
        self.on_change = on_change  # called from a watcher thread when a supervisor exits
        self.launcher = Launcher(jobs_dir / "launcher.log")
        jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home = home or jobs_dir.parent
        self._sandbox = (sandbox, tuple(sandbox_ro_paths), pids_max)
        self._isolation: Isolation | None = None
        self._isolation_lock = threading.Lock()

    @property
    def isolation(self) -> Isolation:
        """What keeps this machine's jobs apart: probed once, on first use (it runs bubblewrap)."""
        with self._isolation_lock:
            if self._isolation is None:
                enabled, ro_paths, pids_max = self._sandbox
                self._isolation = probe(enabled=enabled, ro_paths=ro_paths, pids_max=pids_max)
                self._hidden = hidden(self.home, self._isolation)
            return self._isolation

    def capacity(self) -> Capacity:
        resources = Resources(self.resources.cpus, self.resources.memory_bytes, len(self.gpus))
        # One GPU type per machine: the first GPU's model names them all (a mixed machine is
        # rare, and its jobs ask for a count, not a model).
        gpu_type = self.gpus[0].model if self.gpus else ""
        return Capacity(resources, tuple(g.index for g in self.gpus), gpu_type)

    def job_dir(self, job_id: int, instance: str = "") -> Path:
        return self.jobs_dir / (f"{job_id}-{instance}" if instance else str(job_id))

    # --- submit -------------------------------------------------------------------------------
    def submit(self, spec: LaunchSpec) -> Handle:
        job_dir = self.job_dir(spec.job_id, spec.instance)
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle: Handle = {"dir": str(job_dir)}
        if (job_dir / "launched").exists():  # launched before a crash: adopt it, change nothing
            log.info("job %s was launched before; adopting it", spec.job_id)
            return handle
        # marshal: the supervisor reads it before the job starts, and json would cost it an import.
        # Not fsync'd: after a power cut nothing of this machine's jobs survives anyway.
        spec_file = str(job_dir / "spec.marshal")
        shim.write_atomic(spec_file, marshal.dumps(self._spec_file(spec)), durable=False)
        try:
            # The marker makes the launch happen at most once, whatever crashes in between.
            os.close(os.open(job_dir / "launched", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return handle
        lock_fd = os.open(job_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pid = self.launcher.launch(job_dir, lock_fd)
        finally:
            os.close(lock_fd)  # the supervisor's inherited copy keeps the lock
        # From here on the job may be running: never raise, or it would be marked failed while it
        # runs. What fails below only costs a faster wake-up or a signal; observation still works.
        if pid is not None:
            try:
                shim.write_json_atomic(
                    str(job_dir / "shim.json"),
                    {"pid": pid, "pid_start": shim.proc_start_ticks(pid)},
                    durable=False,
                )
                threading.Thread(
                    target=self._watch, args=(pid,), daemon=True, name=f"watch-{spec.job_id}"
                ).start()
            except Exception:
                log.exception("job %s started, but its bookkeeping failed", spec.job_id)
        return handle

    def was_launched(self, spec: LaunchSpec) -> bool:
        return (self.job_dir(spec.job_id, spec.instance) / "launched").exists()

    def _spec_file(self, spec: LaunchSpec) -> dict[str, object]:
        # A clean environment: the server's PATH and locale and nothing else of its own (its
        # settings, secrets, tokens), then the job's variables, then ours.
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(spec.env)
        env.update(
            FABRIEK_JOB_ID=str(spec.job_id),
            FABRIEK_JOB_NAME=spec.name,
            FABRIEK_CPUS=str(spec.resources.cpus),
            FABRIEK_GPUS=str(spec.resources.gpus),
            # A job that asked for no GPU sees none, so it cannot take another job's.
            CUDA_VISIBLE_DEVICES=",".join(self._gpu_uuid(i) for i in spec.gpu_ids),
        )
        isolation = self.isolation
        identity = spec.identity or NOBODY if isolation.bwrap and isolation.as_root else None
        if (
            identity is not None
        ):  # who it is, for what asks (getpass.getuser(), without a passwd entry)
            env.setdefault("USER", identity.user_name)
            env.setdefault("LOGNAME", identity.user_name)
        return {
            "argv": spec.argv,
            "env": env,
            "ids": [identity.uid, identity.gid] if identity else None,
            "sandbox": self._sandbox_plan(spec, identity) if isolation.bwrap else None,
            "time_limit_s": spec.time_limit_s,
            "kill_grace_seconds": self.kill_grace_seconds,
            "workdir_archive": str(spec.workdir_archive) if spec.workdir_archive else None,
            "workdir_limits": (self.workdir_limits.max_bytes, self.workdir_limits.max_entries),
            "meter": {
                "sys_path": self._meter_path,
                "gpu_indices": list(spec.gpu_ids),
                "gpu_source": self.gpu_energy,
                "memory_bytes": spec.resources.memory_bytes,
                "sample_every_s": self.sample_every_s,
                "estimates": self.estimates,
            }
            if self.metering
            else None,
        }

    def _sandbox_plan(self, spec: LaunchSpec, identity: Identity | None) -> dict[str, object]:
        """What the supervisor needs to start the job in its sandbox (see jail.Sandbox)."""
        isolation = self.isolation
        job_dir = self.job_dir(spec.job_id, spec.instance)
        job = SandboxedJob(
            job_id=spec.job_id,
            work=str(job_dir / WORK_DIR),
            output=str(job_dir / "output"),
            network=spec.network,
            identity=identity,
            gpu_devices=gpu_devices(tuple(self._gpu_minor(i) for i in spec.gpu_ids)),
            hide=self._hidden,
        )
        return {
            "argv": sandbox_argv(isolation, job),
            "argv_zero": spec.argv[0] if spec.argv else "",
            # `none` as root: an empty network namespace, made before bubblewrap starts.
            "unshare_net": isolation.as_root and spec.network == Network.NONE,
            "cgroup": isolation.cgroup.as_dict() if isolation.cgroup else None,
            "memory_bytes": spec.resources.memory_bytes,
            "pids_max": isolation.pids_max,
            "cpus": spec.resources.cpus,
        }

    def _gpu_minor(self, index: int) -> int:
        """The device node number of the GPU NVML numbers `index` (/dev/nvidia<minor>)."""
        gpu = next((g for g in self.gpus if g.index == index), None)
        return gpu.minor if gpu is not None and gpu.minor is not None else index

    def _gpu_uuid(self, index: int) -> str:
        return next((g.uuid for g in self.gpus if g.index == index), str(index))

    def _watch(self, pid: int) -> None:
        """Wake the controller the moment a supervisor ends (it is the launcher's child, not ours)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.on_change()
            return
        try:
            poller = select.poll()  # not select(): that fails for descriptors past 1023
            poller.register(pidfd, select.POLLIN)
            poller.poll()
        finally:
            os.close(pidfd)
        self.on_change()

    # --- observe ------------------------------------------------------------------------------
    def poll(self, handles: Mapping[int, Handle]) -> dict[int, Observation]:
        seen = {}
        for job_id, handle in handles.items():
            try:
                seen[job_id] = self._observe(Path(handle["dir"]))
            except Exception:  # one job's trouble must not blind the controller to the others
                log.exception("cannot observe job %s; trying again next pass", job_id)
        return seen

    def _observe(self, job_dir: Path) -> Observation:
        if not (job_dir / "launched").exists():
            return Observation(Phase.LOST, reason="the job was never launched")
        alive = _lock_held(job_dir / "lock")
        started = _read_json(job_dir / "started.json")
        started_at = _parse_time(started.get("started_at")) if started else None
        if alive:
            # Its result counts only once the supervisor has exited: it writes the result last, and
            # a file the job itself wrote there meanwhile is replaced by then.
            return Observation(Phase.RUNNING if started else Phase.STARTING, started_at=started_at)
        result = _read_json(job_dir / "result.json")
        if result:
            return _finished(result, started_at, job_dir / "energy.jsonl")
        self._kill_orphan(started)
        self._remove_cgroup(job_dir)
        return Observation(
            Phase.LOST, started_at=started_at, reason="the job's supervisor ended without a result"
        )

    @staticmethod
    def _kill_orphan(started: dict[str, object] | None) -> None:
        """A supervisor that died hard may leave its job running: end it, if it is still that process."""
        if not started:
            return
        pid = _same_process(started)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _remove_cgroup(self, job_dir: Path) -> None:
        """A supervisor that died hard left its job's cgroup: end what is in it, remove it."""
        hierarchy = self.isolation.cgroup
        if hierarchy is None:
            return
        cgroup = JobCgroup(hierarchy.as_dict(), key_for(str(job_dir)))
        if cgroup.pids() or any(os.path.isdir(d) for d in cgroup.dirs.values()):
            cgroup.kill_all()
            cgroup.remove()

    # --- cancel -------------------------------------------------------------------------------
    def cancel(self, job_id: int, handle: Handle) -> None:
        job_dir = Path(handle["dir"])
        # The file is noticed by the supervisor within a second, even if the signal gets lost.
        (job_dir / "cancel").touch()
        pid = _same_process(_read_json(job_dir / "shim.json"))
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # --- files --------------------------------------------------------------------------------
    def log_path(
        self, job_id: int, handle: Handle | None, stream: LogStream = "stdout"
    ) -> Path | None:
        if not handle:
            return None
        job_dir = Path(handle["dir"])
        combined = job_dir / "output.log"  # a job supervised before stderr was kept apart
        if not (job_dir / "stdout.log").exists() and combined.exists():
            return combined if stream == "stdout" else None
        return job_dir / f"{stream}.log"

    def output_dir(self, job_id: int, handle: Handle | None) -> Path | None:
        return Path(handle["dir"]) / "output" if handle else None


def _same_process(recorded: dict[str, object] | None) -> int | None:
    """The recorded pid, if that process still runs: its pid *and* start time must match, since a
    pid alone may have been reused by now."""
    pid = recorded.get("pid") if recorded else None
    if isinstance(pid, int) and shim.proc_start_ticks(pid) == recorded.get("pid_start"):  # type: ignore[union-attr]
        return pid
    return None


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
    """A JSON object from `path`; None if it is missing, torn (e.g. after a power cut) or not one."""
    raw = read_job_file(path)  # the job can write its directory: no link, no FIFO, bounded
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parse_time(value: object) -> datetime | None:
    """The supervisor writes seconds since the epoch."""
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def _finished(
    result: dict[str, object], started_at: datetime | None, samples: Path | None = None
) -> Observation:
    outcome = result.get("outcome")
    usage = result.get("usage")
    exit_code, signum = result.get("exit_code"), result.get("signal")
    valid = (
        outcome in {s.value for s in FINAL_STATES}
        and isinstance(exit_code, int | None)
        and isinstance(signum, int | None)
        and (usage is None or _valid_usage(usage))
    )
    if not valid:
        return Observation(
            Phase.LOST, started_at=started_at, reason="the job's result is unreadable"
        )
    reason = result.get("reason")
    return Observation(
        Phase.FINISHED,
        started_at=started_at,
        finished_at=_parse_time(result.get("finished_at")),
        outcome=JobState(str(outcome)),
        exit_code=exit_code,  # type: ignore[arg-type]
        signal=signum,  # type: ignore[arg-type]
        reason=shim.bounded(reason) if isinstance(reason, str) else None,
        usage=Usage(**usage) if isinstance(usage, dict) else None,
        energy=energy_from(result.get("energy"), samples),
    )


def _valid_usage(usage: object) -> bool:
    return (
        isinstance(usage, dict)
        and set(usage) == {"wall_s", "cpu_s", "max_rss_bytes"}
        and all(isinstance(v, int | float) for v in usage.values())
    )


def detect_resources(cpus: int | None, memory_bytes: int | None) -> Resources:
    """The machine's CPUs and memory, less what the system keeps, unless the operator declared them."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    if memory_bytes is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_bytes = total - min(total // 10, 4 * 1024**3)
    return Resources(cpus=cpus, memory_bytes=memory_bytes, gpus=0)


class Launcher:
    """Starts supervisors through a fork server (shim.py --forkserver), started on first use."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                # -I -S: no user site, no site-packages; it needs the standard library only.
                [sys.executable, "-I", "-S", str(SHIM), "--forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # its supervisors survive the server and its Ctrl-C
            )
        theirs.close()
        self._sock = ours
        return ours

    def warm(self) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()

    def launch(self, job_dir: Path, lock_fd: int) -> int | None:
        """The new supervisor's pid; None when the request went out but no answer came back."""
        with self._lock:
            sock = self._sock
            if sock is None or self._proc is None or self._proc.poll() is not None:
                sock = self._start()
            try:
                socket.send_fds(sock, [str(job_dir).encode()], [lock_fd])
            except OSError:  # it died since: the request never left, so it is safe to send again
                sock = self._start()
                socket.send_fds(sock, [str(job_dir).encode()], [lock_fd])
            # Beyond this point never retry: a request that left may have started the job.
            sock.settimeout(10)
            try:
                reply = sock.recv(64)
            except OSError:
                reply = b""
            if not reply:
                log.error("the launcher did not answer for %s; restarting it", job_dir)
                self._proc = None
                return None
            return int(reply)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()  # the fork server ends; supervisors live on
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
