"""The Slurm backend: one fabriek partition on one Slurm partition.

fabriek has already decided that the job may run (pools, allocations, fair share); Slurm places it
on nodes and runs it. Each job gets a directory on the cluster's shared filesystem:

    SHARED/fabriek-wrapper.py, fabriek-job-*.sh  (the batch script: exec PYTHON WRAPPER batch "$1")
    SHARED/fabriek-workdir-archive.py  (core/workdir_archive.py: the wrapper unpacks with it)
    SHARED/jobs/ID-INSTANCE/  spec.json (command, environment: read by the wrapper, never a shell;
                                         once written, the job may be in Slurm)
                              workdir.tar.gz (a copy of the uploaded workdir)
                              work/     (the job's workdir, unpacked by the wrapper as the job's
                                         first step)   outputs/  ($FABRIEK_OUTPUT_DIR)
                              stdout, stderr (of every task; `log` both, for jobs
                                         submitted before they were kept apart)
                              log.index (the logs' sizes over time: base.LOG_INDEX)
                              submitted (the Slurm job id)   started.json, result.json

A job launched as its project (LaunchSpec.identity, with this server running as root) runs on the
nodes as the project's uid and gid (`sbatch --uid --gid`) and keeps its files in its project's
folder instead, where no other tenant may look; what the server alone writes stays apart:

    SHARED/projects/                   root, 0711: no tenant lists the projects
    SHARED/projects/fp<uid>/           root, group the project's, 0750: its jobs enter, no one
                                       else; they cannot rename what is in it
    SHARED/projects/fp<uid>/ID-INSTANCE/  the project's uid, 0700: spec.json, workdir.tar.gz (0600)
                                       and all the job writes, as above (umask 077)
    SHARED/jobs/ID-INSTANCE/           root, 0700: `launched` (the spec is written: the job may be
                                       in Slurm), submitted, cancelled, and `run`, a link to the
                                       run's directory (job_dir finds it by id)

A job launched without an identity (or by a server that is not root, which cannot switch users)
keeps the layout above, as the server's user. With accounting, each job is submitted with its
project's account (backends/slurm/accounts.py, or the operator's `project_accounts`).

Every job gets the same clean environment from this server: sbatch runs with only PATH, HOME (the
job's workdir), LANG and SLURM_CONF in its environment and exports exactly those (--export=ALL of
that); the job's own variables and fabriek's (FABRIEK_*) come through its spec, and Slurm adds its
own (SLURM_*, CUDA_VISIBLE_DEVICES for the GPUs it gave). Nothing else of the server's environment
reaches a job.

Every Slurm command is run with an argument list, never through a shell. The job's name goes to
`--job-name` as one argument; its fabriek id to `--comment=fabriek:ID:INSTANCE`, by which a
submission that a crash interrupted is found again instead of being submitted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabriek.backends.base import (
    Capacity,
    Energy,
    EnergyReading,
    Handle,
    LaunchSpec,
    LogStream,
    Observation,
    Phase,
    Usage,
    energy_from,
    merge_energy,
    read_job_file,
)
from fabriek.backends.local.backend import meter_sys_path
from fabriek.backends.local.shim import bounded
from fabriek.backends.slurm import wrapper
from fabriek.backends.slurm.accounts import RECORD, Accounts
from fabriek.backends.slurm.config import SlurmPartition
from fabriek.core import workdir_archive
from fabriek.core.identity import Identity
from fabriek.core.jobs import JobState, Resources
from fabriek.core.roster import Roster, RosterProject
from fabriek.core.workdir_archive import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0
# How long a job Slurm reports ended may wait for its accounting record (slurmdbd writes it a
# moment later) before it is finished without sacct's figures.
ACCOUNTING_WAIT = 30.0
# Slurm's accounts are brought to the roster when it changed, and this often (seconds) anyway:
# what someone changed by hand in between is repaired.
RESYNC_S = 600.0
ROSTER_EVERY_S = 5.0  # how often the roster is read to see whether it changed
RUN_LINK = "run"  # in a job's state directory: the link to its run's directory
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Slurm's job states -> (phase, fabriek's final state, the reason in words).
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING"}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}
_ENDED: dict[str, tuple[JobState, str | None]] = {
    "COMPLETED": (JobState.SUCCEEDED, None),
    "FAILED": (JobState.FAILED, None),
    "CANCELLED": (JobState.CANCELLED, "cancelled in Slurm"),
    "TIMEOUT": (JobState.TIMED_OUT, "ran out of its time limit (Slurm TIMEOUT)"),
    "DEADLINE": (JobState.TIMED_OUT, "passed its deadline (Slurm DEADLINE)"),
    "NODE_FAIL": (JobState.FAILED, "a node it ran on failed (Slurm NODE_FAIL)"),
    "BOOT_FAIL": (JobState.FAILED, "its node failed to boot (Slurm BOOT_FAIL)"),
    "OUT_OF_MEMORY": (JobState.FAILED, "out of memory (Slurm OUT_OF_MEMORY)"),
    "PREEMPTED": (JobState.FAILED, "preempted by Slurm itself (Slurm PREEMPTED)"),
    "REVOKED": (JobState.CANCELLED, "revoked by Slurm (federation)"),
    "SPECIAL_EXIT": (JobState.FAILED, "held in Slurm after a special exit (SPECIAL_EXIT)"),
}


class SlurmError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class _Record:
    """What Slurm says about one job, from squeue, sacct or the completion log."""

    state: str
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    usage: Usage | None = None
    energy_j: float | None = None


class SlurmBackend:
    # Each submission is an sbatch call that mostly waits for slurmctld's answer: the controller
    # runs this many at once (slurmctld serves them on its own threads).
    concurrent_submissions = 8
    # While a job waits in Slurm, look again after this long (not every 20 ms, as for local
    # jobs): Slurm starts jobs in scheduling cycles, and every look is an squeue call.
    starting_poll_seconds = 1.0

    def _meter_path(self) -> list[str]:
        """Where the wrapper, running as the project's uid, imports fabriek.metering from: this
        server's own installation where every user may read it, else a copy of it (and of
        nvidia-ml-py's module) that the server publishes once in the shared directory
        (`lib/fabriek-<digest>`, root's, readable by all): a server installed under /root, or in
        a checkout only root may enter, would otherwise meter nothing on the nodes."""
        if self._published is not None:
            return self._published
        paths = meter_sys_path()
        if not self.switch_users or all(_readable_by_all(Path(p)) for p in paths):
            self._published = paths
            return paths
        import importlib.util

        import fabriek

        package = Path(fabriek.__file__).resolve().parent
        found = importlib.util.find_spec("pynvml")
        modules = [Path(found.origin)] if found is not None and found.origin else []
        stamp = "".join(f"{p}:{p.stat().st_mtime_ns}" for p in [package, *modules])
        digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        target = self.config.shared_dir / "lib" / f"fabriek-{digest}"
        if not target.is_dir():
            staging = target.with_name(f".{target.name}.{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(
                package, staging / "fabriek", ignore=shutil.ignore_patterns("__pycache__")
            )
            for module in modules:
                shutil.copy2(module, staging / module.name)
            for where, _dirs, files in os.walk(staging):
                os.chmod(where, 0o755)
                for name in files:
                    os.chmod(os.path.join(where, name), 0o644)
            os.chmod(target.parent, 0o755)
            os.replace(staging, target)
        self._published = [str(target)]
        return self._published

    def __init__(
        self,
        config: SlurmPartition,
        *,
        clock: Any = time.time,
        sample_every_s: float = 15.0,
        estimates: dict[str, float] | None = None,
        workdir_limits: Limits = DEFAULT_LIMITS,
        roster: Callable[[], Roster] | None = None,
    ) -> None:
        """`sample_every_s` and `estimates` (fabriek.metering.meter.Estimates' fields): how the
        wrapper meters each node's energy, where `config.metering` is on. `workdir_limits`:
        those the uploads were checked against; the wrapper checks again as it unpacks.
        `roster`: reads fabriek's tenancy, which the cluster's accounts are kept in step with
        where fabriek manages them (`keep_accounts`)."""
        self.config = config
        self.workdir_limits = workdir_limits
        # What the wrapper needs to meter the job's nodes, written into every job's spec.
        self.metering: dict[str, Any] | None = (
            {
                "sys_path": config.fabriek_path or meter_sys_path(),
                "gpu_source": config.gpu_energy,
                "sample_every_s": sample_every_s,
                "estimates": dict(estimates or {}),
            }
            if config.metering
            else None
        )
        self._published: list[str] | None = None  # see _meter_path
        self.name = config.name
        self.clock = clock
        self.jobs_dir = config.shared_dir / "jobs"
        self.projects_dir = config.shared_dir / "projects"
        # Jobs run as their project's uid where this server may switch users (root); else as
        # the server's own user, the submitting Slurm user (docs/slurm.md).
        self.switch_users = os.geteuid() == 0
        self.roster = roster
        self.accounts = (
            Accounts(self._call, config.shared_dir / RECORD, self._runner)
            if config.manages_accounts
            else None
        )
        self._kept: tuple[Roster, float] | None = None  # the roster last applied, and when
        self._keeper: threading.Thread | None = None
        self._looked = float("-inf")  # when keep_accounts last read the roster
        self._keep_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._folders: set[Path] = set()  # project folders made (or found) by this process
        self._ended_at: dict[int, float] = {}  # job -> when Slurm first said it ended
        self._wrapper: Path | None = None
        self._unpacker: Path | None = None
        self._script: Path | None = None
        self._lock = threading.Lock()

    # --- the protocol -------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        c = self.config
        return Capacity(
            Resources(c.cpus_per_node, c.memory_per_node, c.gpus_per_node),
            (),
            c.gpu_type if c.gpus_per_node else "",
            c.nodes,
            c.billing_weight,
        )

    def job_dir(self, job_id: int, instance: str = "") -> Path:
        """The run's directory: its state directory, or for a run as its project, the directory
        in the project's folder that the state directory's link names (made by root in a folder
        only root writes: trusted)."""
        state = self._state_dir(job_id, instance)
        try:
            target = os.readlink(state / RUN_LINK)
        except OSError:
            return state
        return Path(os.path.normpath(state / target))

    def submit(self, spec: LaunchSpec) -> Handle:
        job_dir, state = self._dirs(spec)
        handle: Handle = {"dir": str(job_dir)}
        if state != job_dir:
            handle["state"] = str(state)
        submitted = _read_float(state / "submitted")
        if submitted is not None:  # submitted before a crash: adopt it
            return {**handle, "slurm_id": int(submitted)}
        marker = self._marker(job_dir, state)
        if marker.exists():
            # A crash came between sbatch and recording its answer: Slurm may have the job.
            found = self.find(spec.job_id, spec.instance)
            if found is not None or (job_dir / "started.json").exists():
                return self._record_submission(state, handle, found)
            log.info(
                "job %s: an interrupted submission never reached Slurm; submitting", spec.job_id
            )
            account = self._account(spec)
        else:
            account = self._account(spec)  # before anything is written: none, no launch
            self._prepare(job_dir, spec, state)
        try:
            out = self._run(
                self._sbatch_argv(spec, job_dir, account),
                what="sbatch",
                env=self._job_env(job_dir),
                umask=0o077,  # the job's files: its own alone (Slurm passes the umask on)
            )
        except SlurmError:
            # Did it reach Slurm after all (a timeout on the answer)? Then adopt it.
            found = self.find(spec.job_id, spec.instance)
            if found is not None:
                return self._record_submission(state, handle, found)
            marker.unlink(missing_ok=True)
            raise
        slurm_id = int(out.strip().split(";")[0])  # --parsable: ID or ID;CLUSTER
        return self._record_submission(state, handle, slurm_id)

    def was_launched(self, spec: LaunchSpec) -> bool:
        return self._marker(*self._dirs(spec)).exists()

    def poll(self, handles: Mapping[int, Handle]) -> dict[int, Observation]:
        """One `squeue --json` for all jobs; sacct (or the completion log) once for those that
        left squeue or ended; the wrapper's files for what Slurm does not keep."""
        if not handles:
            return {}
        ids = {job_id: h.get("slurm_id") for job_id, h in handles.items()}
        live = self.squeue()
        ended = {
            job_id
            for job_id, sid in ids.items()
            if sid is None or sid not in live or live[sid].state not in _WAITING | _RUNNING
        }
        records = self.finished_records([ids[j] for j in ended if ids[j] is not None])
        result: dict[int, Observation] = {}
        for job_id, handle in handles.items():
            sid = ids[job_id]
            record = live.get(sid) if sid is not None else None
            if job_id in ended:
                record = records.get(sid, record) if sid is not None else None
            result[job_id] = self._observe(job_id, Path(handle["dir"]), record, _state(handle))
        for job_id in [j for j in self._ended_at if j not in handles]:
            del self._ended_at[job_id]  # forget jobs no longer asked about
        return result

    def cancel(self, job_id: int, handle: Handle) -> None:
        """SIGTERM to every step of the job (and a waiting job is removed at once); after the
        grace period, Slurm's own cancel (which kills what is left after its KillWait)."""
        sid = handle.get("slurm_id")
        if sid is None:
            return
        now = self.clock()
        # On the shared filesystem, not in memory: it survives a restart of fabriek, keeps the
        # grace period, and tells `poll` that the job ended because it was asked to.
        marker = _state(handle) / "cancelled"
        first = _read_float(marker)
        if first is None:
            _write_marker(marker, repr(now))
            self._run(
                ["scancel", "--state=PENDING", str(sid)], what="scancel", check=False
            )  # never started: nothing to signal
            self._run(["scancel", "--signal=TERM", "--full", str(sid)], what="scancel", check=False)
        elif now - first >= self.config.grace_seconds:
            self._run(["scancel", str(sid)], what="scancel", check=False)

    def log_path(
        self, job_id: int, handle: Handle | None, stream: LogStream = "stdout"
    ) -> Path | None:
        if not handle:
            return None
        job_dir = Path(handle["dir"])
        if (job_dir / "log").exists():  # submitted before stdout and stderr were kept apart
            return job_dir / "log" if stream == "stdout" else None
        return job_dir / stream

    def output_dir(self, job_id: int, handle: Handle | None) -> Path | None:
        return Path(handle["dir"]) / "outputs" if handle else None

    # --- Slurm's answers ----------------------------------------------------------------------
    def squeue(self) -> dict[int, _Record]:
        """Every job of this partition Slurm's controller knows (also those that ended within
        its MinJobAge), by Slurm job id."""
        out = self._run(["squeue", "--json"], what="squeue")
        found: dict[int, _Record] = {}
        for job in json.loads(out).get("jobs", []):
            if job.get("partition") != self.config.partition:
                continue
            found[int(job["job_id"])] = _squeue_record(job)
        return found

    def find(self, job_id: int, instance: str) -> int | None:
        """The Slurm job that carries this fabriek job's comment, if Slurm knows one."""
        comment = _comment(job_id, instance)
        out = self._run(["squeue", "--json"], what="squeue")
        for job in json.loads(out).get("jobs", []):
            if job.get("comment") == comment:
                return int(job["job_id"])
        if self.config.accounting:
            out = self._run(
                ["sacct", "-X", "-n", "-P", "--starttime=now-7days", "-o", "JobIDRaw,Comment"],
                what="sacct",
                check=False,
            )
            for line in out.splitlines():
                sid, _, text = line.partition("|")
                if text == comment and sid.isdigit():
                    return int(sid)
        return None

    def finished_records(self, slurm_ids: Iterable[int]) -> dict[int, _Record]:
        ids = sorted(set(slurm_ids))
        if not ids:
            return {}
        if self.config.accounting:
            return self._sacct(ids)
        if self.config.jobcomp_file is not None:
            return _read_jobcomp(self.config.jobcomp_file, set(ids))
        return {}

    def _sacct(self, ids: list[int]) -> dict[int, _Record]:
        fields = (
            "JobIDRaw,State,ExitCode,Start,End,ElapsedRaw,TotalCPU,MaxRSS,ConsumedEnergyRaw,Reason"
        )
        records: dict[int, _Record] = {}
        for start in range(0, len(ids), 500):
            chunk = ",".join(str(i) for i in ids[start : start + 500])
            out = self._run(
                ["sacct", "-n", "-P", "-j", chunk, "-o", fields], what="sacct", check=False
            )
            records.update(_parse_sacct(out))
        return records

    # --- helpers ------------------------------------------------------------------------------
    def _observe(
        self, job_id: int, job_dir: Path, record: _Record | None, state: Path | None = None
    ) -> Observation:
        """What the job's files (in `job_dir`, the server's own in `state`, by default the same)
        and Slurm's record say."""
        state = state or job_dir
        if record is not None and record.state in _WAITING:  # no files to read yet
            return Observation(Phase.STARTING, reason=record.reason)
        started = _read_json(job_dir / "started.json")
        started_at = (
            datetime.fromtimestamp(float(started["started_at"]), UTC)
            if started
            else (record.started_at if record else None)
        )
        if record is not None and record.state in _RUNNING:
            return Observation(Phase.RUNNING, started_at=started_at)
        result = _read_json(job_dir / "result.json")
        if record is None and result is None:
            if not (state / "submitted").exists() and not started:
                return Observation(Phase.LOST, reason="the job never reached Slurm")
            return Observation(
                Phase.LOST,
                started_at=started_at,
                reason="Slurm has no record of the job (it left squeue, and no accounting or "
                "completion log says how it ended)",
            )
        if record is not None and record.usage is None and self.config.accounting:
            # Ended, but its accounting record is not written yet: wait a little for it.
            first = self._ended_at.setdefault(job_id, self.clock())
            if self.clock() - first < ACCOUNTING_WAIT:
                return Observation(Phase.RUNNING, started_at=started_at or record.started_at)
        seen = _finished(record, result, started_at)
        seen = replace(seen, energy=self._energy(job_dir, record))
        asked = _read_float(state / "cancelled")
        if (
            asked is not None
            and seen.outcome != JobState.CANCELLED
            and (seen.finished_at is None or seen.finished_at.timestamp() >= asked - 1)
        ):
            # It ended after fabriek asked it to stop (also if it caught SIGTERM and exited 0).
            reason = "cancelled: " + (seen.reason or f"exit code {seen.exit_code}")
            seen = replace(seen, outcome=JobState.CANCELLED, reason=reason)
        return seen

    def _energy(self, job_dir: Path, record: _Record | None) -> Energy | None:
        """What the wrapper metered on each node, added up; sacct's ConsumedEnergy in place of
        CPU and memory figures the nodes could only estimate, where the cluster measures it."""
        parts = []
        for totals in sorted(job_dir.glob("nodes/*/energy.json")):
            part = energy_from(_read_json(totals), totals.with_suffix(".jsonl"))
            if part is not None:
                parts.append(part)
        energy = merge_energy(parts)
        consumed = record.energy_j if record is not None else None
        if not consumed or not self.config.consumed_energy:
            return energy
        components = dict(energy.components) if energy else {}
        by_hour = dict(energy.by_hour) if energy else {}
        if "cpu" in components and components["cpu"].measured:
            return energy  # RAPL on the nodes, per job: finer than the node's total
        for name in ("cpu", "dram"):
            components.pop(name, None)
        components["cpu"] = EnergyReading(
            consumed,
            "Slurm's ConsumedEnergy (sacct): the energy of the job's nodes while it ran, as the "
            "cluster's energy plugin measured it",
            True,
        )
        if record is not None and record.finished_at is not None:  # placed in its end's hour
            hour = record.finished_at.replace(minute=0, second=0, microsecond=0)
            gpu = components["gpu"].joules if "gpu" in components else 0.0
            by_hour = {hour: consumed + gpu} if not by_hour else _rescale(by_hour, consumed + gpu)
        return Energy(components, by_hour)

    def _prepare(self, job_dir: Path, spec: LaunchSpec, state: Path | None = None) -> None:
        """The job's directory on the shared filesystem: a copy of its workdir archive, then its
        spec, last (the wrapper makes what else it needs on the node, the workdir unpacked
        included: this is the submission's hot path, and shared filesystems are slow at creating
        files). For a run as its project, the directory is in its project's folder, its own,
        and `state` (the server's) gets the link to it, then `launched`, last."""
        state = state or job_dir
        owner = spec.identity if state != job_dir else None
        if owner is not None:
            self._project_folder(owner)
            for directory in (state, job_dir):  # half-prepared before a crash: start again
                shutil.rmtree(directory, ignore_errors=True)
            self.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            state.mkdir(mode=0o700)
            job_dir.mkdir(mode=0o700)
            os.chown(job_dir, owner.uid, owner.gid)
            os.symlink(os.path.relpath(job_dir, state), state / RUN_LINK)
        else:
            try:
                job_dir.mkdir(mode=0o700, parents=True)
            except FileExistsError:  # half-prepared before a crash: start again
                shutil.rmtree(job_dir)
                job_dir.mkdir(mode=0o700)
        data: dict[str, Any] = {
            "argv": spec.argv,
            "env": spec.env,
            "fabriek_env": {
                "FABRIEK_JOB_ID": str(spec.job_id),
                "FABRIEK_JOB_NAME": spec.name,
                "FABRIEK_CPUS": str(spec.resources.cpus),
                "FABRIEK_GPUS": str(spec.resources.gpus),
            },
            "nodes": spec.nodes,
            "workdir": str(job_dir / "work"),
            "output_dir": str(job_dir / "outputs"),
            "srun": self._command("srun"),
        }
        if self.metering is not None:
            meter = {**self.metering, "memory_bytes": spec.resources.memory_bytes}
            if not self.config.fabriek_path:
                meter["sys_path"] = self._meter_path()
            data["meter"] = meter
        if spec.workdir_archive is not None:
            # Copied, not unpacked: the wrapper unpacks it on the node as the job's first step,
            # in its time and cancellable, with the check the upload passed (the unpacker).
            archive = job_dir / "workdir.tar.gz"
            shutil.copyfile(spec.workdir_archive, archive)
            _own(archive, owner)
            limits = self.workdir_limits
            data["workdir_archive"] = str(archive)
            data["workdir_limits"] = [limits.max_bytes, limits.max_entries]
            data["unpacker"] = str(self._unpacker_path())
        (job_dir / "spec.json").write_text(json.dumps(data))
        _own(job_dir / "spec.json", owner)  # it holds the user's variables: theirs alone
        if state != job_dir:
            (state / "launched").write_text("")

    def _dirs(self, spec: LaunchSpec) -> tuple[Path, Path]:
        """The run's directory and the server's own (the same, but for a run as its project)."""
        state = self._state_dir(spec.job_id, spec.instance)
        if spec.identity is None or not self.switch_users or (state / "spec.json").exists():
            return state, state  # (a spec there: launched before runs were kept per project)
        return self.projects_dir / spec.identity.user_name / state.name, state

    def _state_dir(self, job_id: int, instance: str) -> Path:
        return self.jobs_dir / (f"{job_id}-{instance}" if instance else str(job_id))

    @staticmethod
    def _marker(job_dir: Path, state: Path) -> Path:
        """The file whose presence says the job may be in Slurm (written before sbatch)."""
        return state / "launched" if state != job_dir else job_dir / "spec.json"

    def _project_folder(self, identity: Identity) -> Path:
        """SHARED/projects/fp<uid>: root's, group the project's, 0750 (docs/slurm.md)."""
        folder = self.projects_dir / identity.user_name
        if folder in self._folders:
            return folder
        self.projects_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.projects_dir, 0o711)  # entered by every project, listed by none
        folder.mkdir(mode=0o750, exist_ok=True)
        os.chown(folder, 0, identity.gid)
        os.chmod(folder, 0o750)
        self._folders.add(folder)
        return folder

    def _job_env(self, job_dir: Path) -> dict[str, str]:
        """sbatch's whole environment, which --export=ALL hands the job: PATH, HOME (the job's
        workdir), LANG, and SLURM_CONF where one is set (srun in the job needs it)."""
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "HOME": str(job_dir / "work"),
            "LANG": os.environ.get("LANG") or "C.UTF-8",
        }
        conf = self.config.slurm_conf or os.environ.get("SLURM_CONF")
        if conf:
            env["SLURM_CONF"] = str(conf)
        return env

    # --- accounts -----------------------------------------------------------------------------
    def keep_accounts(self) -> None:
        """Bring the cluster's accounts to fabriek's roster on a thread of its own, where the
        roster changed since it last did or RESYNC_S passed; returns at once. The controller
        calls it every full pass: at the server's start, and so within ROSTER_EVERY_S (and
        the sync's time) after a membership changed.
        Nothing where fabriek does not manage this cluster's accounts."""
        if self.accounts is None or self.roster is None:
            return
        with self._keep_lock:
            if self._keeper is not None and self._keeper.is_alive():
                return
            if self.clock() - self._looked < ROSTER_EVERY_S:
                return
            self._looked = self.clock()
            self._keeper = threading.Thread(
                target=self._keep, name=f"accounts-{self.name}", daemon=True
            )
            self._keeper.start()

    def _keep(self) -> None:
        try:
            self.sync_accounts()
        except Exception:  # slurmdbd away, say: the next pass tries again
            log.exception("cannot bring Slurm's accounts for partition %s in step", self.name)

    def sync_accounts(self, *, force: bool = False) -> None:
        """`keep_accounts`' work, here and now (`force`: even where the roster is unchanged)."""
        if self.accounts is None or self.roster is None:
            return
        roster = self.roster()  # its own short read: nothing is held across sacctmgr
        with self._sync_lock:
            kept = self._kept
            if (
                not force
                and kept is not None
                and kept[0] == roster
                and self.clock() - kept[1] < RESYNC_S
            ):
                return
            self.accounts.apply(roster)
            self._kept = (roster, self.clock())

    def _account(self, spec: LaunchSpec) -> str | None:
        """The account the job is submitted with: its project's where fabriek manages them (a
        project made since the last sync is synced now), else the operator's mapping, else the
        partition's `account`. Raises SlurmError where its project has none."""
        c = self.config
        if spec.identity is None:
            return c.account
        project = spec.identity.project
        if self.accounts is None:
            return c.project_accounts.get(project, c.account)
        account = self.accounts.account_of(project)
        if account is None:
            try:
                self.sync_accounts(force=True)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                raise SlurmError(f"cannot bring Slurm's accounts in step: {exc}") from exc
            account = self.accounts.account_of(project)
        if account is None:
            why = self.accounts.problem_of(project) or "fabriek's roster does not have it yet"
            raise SlurmError(f"project {project!r} has no Slurm account on {self.name}: {why}")
        return account

    def _runner(self, project: RosterProject) -> str:
        """The Slurm user the project's jobs run as: its own, or this server's."""
        if self.switch_users:
            return Identity(project.uid, project.uid, project.name).user_name
        return pwd.getpwuid(os.geteuid()).pw_name

    def _sbatch_argv(self, spec: LaunchSpec, job_dir: Path, account: str | None) -> list[str]:
        c, r = self.config, spec.resources
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={spec.name}",
            f"--comment={_comment(spec.job_id, spec.instance)}",
            f"--partition={c.partition}",
            f"--nodes={spec.nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={r.cpus}",
            f"--mem={max(1, r.memory_bytes // 2**20)}M",
            f"--time={max(1, -(-spec.time_limit_s // 60))}",
            f"--output={job_dir / 'stdout'}",
            f"--error={job_dir / 'stderr'}",
            "--open-mode=append",
            f"--chdir={job_dir}",
            "--export=ALL",  # all of sbatch's environment, which is _job_env's alone
            "--no-requeue",
        ]
        if spec.identity is not None and self.switch_users:
            argv += [f"--uid={spec.identity.uid}", f"--gid={spec.identity.gid}"]
        if r.gpus:
            argv.append(f"--gpus-per-node={r.gpus}")
        if account:
            argv.append(f"--account={account}")
        if c.qos:
            argv.append(f"--qos={c.qos}")
        # The script is the same for every job; the spec's path is its one argument.
        argv += [str(self._script_path()), str(job_dir / "spec.json")]
        return argv

    def _record_submission(self, state: Path, handle: Handle, slurm_id: int | None) -> Handle:
        if slurm_id is None:
            return handle  # it ran, and Slurm forgot it: its files say how it ended
        # Not renamed into place: a torn write reads as no id, and the id is then found again
        # by the job's comment.
        _write_marker(state / "submitted", str(slurm_id))
        return {**handle, "slurm_id": slurm_id}

    def _wrapper_path(self) -> Path:
        """The wrapper, copied to the shared directory so that every node can run it."""
        if self._wrapper is None:
            self._wrapper = self._shared_file(
                "fabriek-wrapper.py", Path(wrapper.__file__).read_bytes()
            )
        return self._wrapper

    def _unpacker_path(self) -> Path:
        """core/workdir_archive.py, copied beside the wrapper: the nodes need no fabriek."""
        if self._unpacker is None:
            self._unpacker = self._shared_file(
                "fabriek-workdir-archive.py", Path(workdir_archive.__file__).read_bytes()
            )
        return self._unpacker

    def _script_path(self) -> Path:
        """The batch script every job runs: fixed text, whose only words are paths fabriek chose,
        each quoted; the job's spec comes as its argument, never as text in a script."""
        if self._script is None:
            words = [self.config.python, str(self._wrapper_path()), "batch"]
            text = "#!/bin/sh\nexec " + " ".join(shlex.quote(w) for w in words) + ' "$1"\n'
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            self._script = self._shared_file(f"fabriek-job-{digest}.sh", text.encode(), 0o755)
        return self._script

    def _shared_file(self, name: str, content: bytes, mode: int = 0o644) -> Path:
        target = self.config.shared_dir / name
        with self._lock:  # the controller submits from several threads
            if not target.exists() or target.read_bytes() != content:
                self.config.shared_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(content)
                tmp.chmod(mode)
                os.replace(tmp, target)
        return target

    def _command(self, name: str) -> str:
        return str(self.config.bin_dir / name) if self.config.bin_dir else name

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIEK_")}
        if self.config.slurm_conf is not None:
            env["SLURM_CONF"] = str(self.config.slurm_conf)
        return env

    def _run(
        self,
        argv: list[str],
        *,
        what: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        umask: int = -1,
    ) -> str:
        try:
            done = self._call(argv, env=env, umask=umask)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{what} failed: {exc}") from exc
        if check and done.returncode != 0:
            raise SlurmError(f"{what} failed: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def _call(
        self, argv: list[str], *, env: dict[str, str] | None = None, umask: int = -1
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command, its output captured; raises OSError or TimeoutExpired."""
        argv = [self._command(argv[0]), *argv[1:]]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env if env is not None else self._env(),
            timeout=COMMAND_TIMEOUT,
            umask=umask,
        )


def _state(handle: Handle) -> Path:
    """The job's state directory: the server's own files (its run's directory before runs as
    projects kept them apart)."""
    return Path(handle.get("state") or handle["dir"])


def _own(path: Path, owner: Identity | None) -> None:
    """Make a file the server put in a project's run directory the project's, 0600."""
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
        os.chmod(path, 0o600)


def _write_marker(path: Path, text: str) -> None:
    """Write one of the server's small files without following a link or blocking on a FIFO
    (a run directory of a job that ran as the server's user is the job's to change)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _rescale(by_hour: dict[datetime, float], total: float) -> dict[datetime, float]:
    """The same hours, in the same proportions, adding up to `total`."""
    known = sum(by_hour.values())
    if known <= 0:
        return {max(by_hour): total}
    return {hour: joules * total / known for hour, joules in by_hour.items()}


def _comment(job_id: int, instance: str) -> str:
    return f"fabriek:{job_id}:{instance}"


def _epoch(value: Any) -> datetime | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": N}
        value = value.get("number") if value.get("set", True) else None
    if not value:
        return None
    return datetime.fromtimestamp(int(value), UTC)


def _state_of(value: Any) -> str:
    if isinstance(value, list):  # newer Slurm: ["RUNNING"]
        value = value[0] if value else "PENDING"
    return str(value)


def _squeue_record(job: dict[str, Any]) -> _Record:
    state = _state_of(job.get("job_state"))
    reason = job.get("state_reason")
    exit_code = job.get("exit_code")
    if isinstance(exit_code, dict):
        exit_code = (
            exit_code.get("return_code", {}).get("number")
            if isinstance(exit_code.get("return_code"), dict)
            else exit_code.get("return_code")
        )
    code = sig = None
    if isinstance(exit_code, int):
        # squeue gives the wait status: exit code in the high byte, signal in the low.
        code, sig = (exit_code >> 8) & 0xFF, exit_code & 0x7F or None
    return _Record(
        state=state,
        reason=f"waiting in Slurm: {reason}" if reason and reason != "None" else None,
        started_at=_epoch(job.get("start_time")),
        finished_at=_epoch(job.get("end_time")) if state in _ENDED else None,
        exit_code=code,
        signal=sig,
    )


def _seconds(text: str) -> float | None:
    """Slurm's [D-]HH:MM:SS[.mmm] or MM:SS.mmm."""
    if not text:
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [float(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def _bytes(text: str) -> int | None:
    if not text:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def _time(text: str) -> datetime | None:
    if not text or text in ("Unknown", "None"):
        return None
    return datetime.fromisoformat(text).astimezone(UTC)


def _parse_sacct(out: str) -> dict[int, _Record]:
    """`sacct -P -o JobIDRaw,State,ExitCode,Start,End,ElapsedRaw,TotalCPU,MaxRSS,ConsumedEnergyRaw,
    Reason`: the job's line gives its state and times; its steps' lines the peak memory."""
    jobs: dict[int, list[str]] = {}
    max_rss: dict[int, int] = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 10:
            continue
        job, _, step = fields[0].partition(".")
        if not job.isdigit():
            continue
        sid = int(job)
        if step:
            rss = _bytes(fields[7])
            if rss is not None:
                max_rss[sid] = max(max_rss.get(sid, 0), rss)
        else:
            jobs[sid] = fields
    records = {}
    for sid, f in jobs.items():
        state = f[1].split()[0] if f[1] else "PENDING"  # "CANCELLED by 0"
        code, _, sig = f[2].partition(":")
        energy = f[8].strip()
        records[sid] = _Record(
            state=state,
            reason=f[9] if f[9] and f[9] != "None" else None,
            started_at=_time(f[3]),
            finished_at=_time(f[4]),
            exit_code=int(code) if code.isdigit() else None,
            signal=int(sig) or None if sig.isdigit() else None,
            usage=Usage(
                wall_s=float(f[5] or 0),
                cpu_s=_seconds(f[6]) or 0.0,
                max_rss_bytes=max_rss.get(sid, 0),
            )
            if state in _ENDED
            else None,
            energy_j=float(energy)
            if energy and energy.replace(".", "", 1).isdigit() and float(energy) > 0
            else None,
        )
    return records


def _read_jobcomp(path: Path, wanted: set[int]) -> dict[int, _Record]:
    """jobcomp/filetxt's lines: `JobId=12 UserId=... JobState=COMPLETED ... ExitCode=0:0 ...`."""
    records: dict[int, _Record] = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                sid = fields.get("JobId", "")
                if not sid.isdigit() or int(sid) not in wanted:
                    continue
                code, _, sig = fields.get("ExitCode", "").partition(":")
                records[int(sid)] = _Record(
                    state=fields.get("JobState", "FAILED").split()[0],
                    started_at=_time(fields.get("StartTime", "")),
                    finished_at=_time(fields.get("EndTime", "")),
                    exit_code=int(code) if code.isdigit() else None,
                    signal=int(sig) or None if sig.isdigit() else None,
                )
    except OSError as exc:
        log.warning("cannot read the job completion log %s: %s", path, exc)
    return records


# The job can write its directory: these read it without following a link or reading a FIFO
# (which blocked the controller for ever), and only so much (base.read_job_file).
def _read_float(path: Path) -> float | None:
    raw = read_job_file(path)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    raw = read_job_file(path)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _finished(
    record: _Record | None, result: dict[str, Any] | None, started_at: datetime | None
) -> Observation:
    """How it ended: Slurm's state names the outcome (a timeout, a cancel, a node failure); the
    wrapper's result the exit code where Slurm has none; sacct the usage where it has it."""
    # The wrapper's clock to the microsecond where it wrote one; Slurm's to the second.
    finished_at = record.finished_at if record else None
    if result and result.get("finished_at"):
        finished_at = datetime.fromtimestamp(float(result["finished_at"]), UTC)
    exit_code = result.get("exit_code") if result else None
    sig = result.get("signal") if result else None
    if exit_code is None and sig is None and record is not None:
        exit_code, sig = record.exit_code, record.signal
    if record is not None:
        outcome, reason = _ENDED.get(record.state, (JobState.FAILED, f"Slurm says {record.state}"))
        if outcome == JobState.SUCCEEDED and exit_code not in (0, None):
            outcome = JobState.FAILED
    else:  # only the wrapper's word
        outcome = JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED
        reason = None
    if outcome == JobState.FAILED and reason is None:
        reason = (
            (result or {}).get("reason")
            or (f"exited with code {exit_code}" if exit_code is not None else None)
            or (f"killed by signal {sig}" if sig else None)
        )
    usage = record.usage if record is not None else None
    if result and "wall_s" in result:
        # The wrapper saw its node (every node, for one-node jobs) to the microsecond; sacct
        # sees every node, to the second, and peak memory only at its sampling interval.
        mine = Usage(
            wall_s=float(result["wall_s"]),
            cpu_s=float(result.get("cpu_s") or 0.0),
            max_rss_bytes=int(result.get("max_rss_bytes") or 0),
        )
        usage = (
            mine
            if usage is None
            else Usage(
                mine.wall_s,
                max(mine.cpu_s, usage.cpu_s),
                max(mine.max_rss_bytes, usage.max_rss_bytes),
            )
        )
    return Observation(
        Phase.FINISHED,
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        exit_code=exit_code,
        signal=sig,
        reason=bounded(reason) if isinstance(reason, str) else None,  # read from a job's files
        usage=usage,
    )


def _readable_by_all(path: Path) -> bool:
    """Whether any user may reach and read `path` (every directory above it lets others in)."""
    try:
        return bool(path.stat().st_mode & 0o004) and all(
            p.stat().st_mode & 0o001 for p in path.resolve().parents
        )
    except OSError:
        return False
