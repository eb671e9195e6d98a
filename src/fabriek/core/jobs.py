"""The job: its states, the legal moves between them, and what a user may ask for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from fabriek.core.errors import IllegalTransition, InvalidRequest
from fabriek.core.identity import Network
from fabriek.core.text import check_label


class JobState(StrEnum):
    PENDING = "pending"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    # Stopped to give a pool its guaranteed capacity back; requeued (pending) at once, keeping
    # its place in the queue.
    PREEMPTED = "preempted"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def holds_resources(self) -> bool:
        return self in (JobState.ADMITTED, JobState.RUNNING)


DEFAULT_MEMORY_BYTES = 2 * 1024**3  # per node, when the user asks for none

FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

_FINISHED = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ADMITTED, JobState.CANCELLED}),
    # An admitted job may fail, be cancelled or be preempted before its process ever started.
    JobState.ADMITTED: frozenset(
        {JobState.RUNNING, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED}
    ),
    JobState.RUNNING: frozenset(_FINISHED | {JobState.PREEMPTED}),
    JobState.PREEMPTED: frozenset({JobState.PENDING}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


def check_transition(job_id: int, current: JobState, target: JobState) -> None:
    """Raise IllegalTransition unless `current -> target` is a legal move."""
    if target not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(
            f"job {job_id} cannot go from {current.value} to {target.value}",
            job_id=job_id,
            current=current.value,
            target=target.value,
        )


# Limits that no sane request exceeds, whatever the factory; beyond them the request is a typo.
MAX_TIME_LIMIT_S = 30 * 86400
MAX_NAME_LEN = 128
MAX_ARGV_ITEMS = 4096
MAX_ENV_ITEMS = 256
# What exec(2) takes: each argument and each KEY=value at most MAX_ARG_STRLEN bytes (Linux: 32
# pages, its NUL included), all of them together within ARG_MAX (2 MiB with the usual 8 MiB
# stack). A job's own part is held to half of that, leaving room for what fabriek and the
# backend add (its FABRIEK_* variables, the site's environment); larger belongs in a file.
MAX_ARG_STRLEN = 128 * 1024 - 1
MAX_EXEC_BYTES = 1024 * 1024
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # and not FABRIEK_*, CUDA_VISIBLE_DEVICES
# Variables the shell that takes on a sandboxed job's environment acts on as it reads them
# (backends/local/sandbox.py): `OPTIND=abc` stops it before the job starts.
SHELL_READS = frozenset({"OPTIND"})
MAX_PRIORITY = 1000
MAX_FLEXIBLE_S = 7 * 86400  # green scheduling looks a week ahead
MAX_NODES = 1024
MAX_CPUS = 4096  # on one node
MAX_GPUS = 64  # on one node
MAX_MEMORY_BYTES = 2**50  # 1 PiB on one node
PARTITION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Resources:
    """What one job asks for on one node."""

    cpus: int
    memory_bytes: int
    gpus: int = 0

    def fits_in(self, other: Resources) -> bool:
        return (
            self.cpus <= other.cpus
            and self.memory_bytes <= other.memory_bytes
            and self.gpus <= other.gpus
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpus - other.cpus, self.memory_bytes - other.memory_bytes, self.gpus - other.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpus + other.cpus, self.memory_bytes + other.memory_bytes, self.gpus + other.gpus
        )


def validate_request(
    *,
    name: str,
    argv: list[str],
    resources: Resources,
    time_limit_s: int,
    env: dict[str, str],
    nodes: int = 1,
    partition: str | None = None,
) -> None:
    """Reject requests that are malformed whatever the factory's size (one clear sentence each)."""
    for what, text in [
        ("job name", name),
        *(("command", a) for a in argv),
        *(("environment", t) for kv in env.items() for t in kv),
    ]:
        _check_text(what, text)
    check_label(name, what="job name", max_len=MAX_NAME_LEN)
    if not argv or not argv[0]:
        raise InvalidRequest("the command is empty; give it after `--`, e.g. -- python train.py")
    if len(argv) > MAX_ARGV_ITEMS:
        raise InvalidRequest(f"the command has more than {MAX_ARGV_ITEMS} arguments")
    if any("\x00" in a for a in argv):
        raise InvalidRequest("the command contains a NUL byte")
    if not 1 <= resources.cpus <= MAX_CPUS:
        raise InvalidRequest(f"a job asks for 1 to {MAX_CPUS} CPUs a node, got {resources.cpus}")
    if not 1024 * 1024 <= resources.memory_bytes <= MAX_MEMORY_BYTES:
        raise InvalidRequest("a job asks for 1M to 1P of memory a node")
    if not 0 <= resources.gpus <= MAX_GPUS:
        raise InvalidRequest(f"a job asks for 0 to {MAX_GPUS} GPUs a node, got {resources.gpus}")
    if time_limit_s <= 0:
        raise InvalidRequest("the time limit must be more than zero")
    if time_limit_s > MAX_TIME_LIMIT_S:
        raise InvalidRequest(
            f"the time limit is beyond the maximum of {MAX_TIME_LIMIT_S // 86400} days"
        )
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidRequest(f"a job runs on 1 to {MAX_NODES} nodes, got {nodes}")
    if partition is not None and not PARTITION_NAME.fullmatch(partition):
        raise InvalidRequest(
            f"invalid partition name {partition!r}: letters, digits, '.', '_' and '-', at most 64"
        )
    if len(env) > MAX_ENV_ITEMS:
        raise InvalidRequest(f"at most {MAX_ENV_ITEMS} environment variables")
    for key, value in env.items():
        if key.startswith("FABRIEK_") or key == "CUDA_VISIBLE_DEVICES":
            raise InvalidRequest(f"{key} is set by fabriek and cannot be overridden")
        if key in SHELL_READS:
            raise InvalidRequest(f"{key} cannot be set: the shell that starts the job reads it")
        if not ENV_NAME.fullmatch(key) or "\x00" in value:
            raise InvalidRequest(
                f"invalid environment variable name {key!r}: ASCII letters, digits and '_', "
                "not starting with a digit"
            )
    _check_exec_size(argv, env)


def _check_exec_size(argv: list[str], env: dict[str, str]) -> None:
    """Refuse what exec(2) would refuse ("Argument list too long") before the job is queued."""
    total = 0
    for what, text in [
        *(("an argument", a) for a in argv),
        *((f"environment variable {k}", f"{k}={v}") for k, v in env.items()),
    ]:
        size = len(text.encode()) + 1  # _check_text made sure it encodes
        if size > MAX_ARG_STRLEN + 1:
            raise InvalidRequest(
                f"{what} is {size - 1:,} bytes, beyond the {MAX_ARG_STRLEN:,} an exec takes; "
                "pass large values in a file of the workdir"
            )
        total += size
    if total > MAX_EXEC_BYTES:
        raise InvalidRequest(
            f"the command and environment are {total:,} bytes together, beyond the limit of "
            f"{MAX_EXEC_BYTES:,}; pass large values in a file of the workdir"
        )


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a user asks to run, before it is a job."""

    name: str
    project: str | None  # None: the submitter's own (services.jobs.default_project)
    argv: list[str]
    resources: Resources
    time_limit_s: int
    env: dict[str, str]
    workdir_digest: str | None = None
    allocation_id: int | None = None  # charged against this allocation when given
    # May be stopped (SIGTERM, a grace period, requeued) when the capacity it borrowed beyond its
    # pool's guarantee is reclaimed. Only preemptible jobs borrow.
    preemptible: bool = False
    # Orders jobs of equal fair share (higher first). Anyone may lower their own jobs' priority;
    # only operators raise it above 0.
    priority: int = 0
    # Green scheduling: it must end by `deadline`, or may start up to `flexible_s` late; the
    # engine may hold it back for greener hours. Needs a time limit the user chose.
    deadline: datetime | None = None
    flexible_s: int | None = None
    time_limit_given: bool = True
    # False: the user gave no memory, and `resources` holds DEFAULT_MEMORY_BYTES, which the
    # service lowers to what the partition it goes to offers (services.jobs.fit_default_memory).
    memory_given: bool = True
    # `resources` on each of `nodes` nodes (a multi-node job is started on all at once), in
    # `partition` if named (None: wherever the engine finds room).
    nodes: int = 1
    partition: str | None = None
    # What it may reach (none < loopback < host); None: its partition's default.
    network: Network | None = None


@dataclass(frozen=True, slots=True)
class JobEvent:
    at: datetime
    from_state: JobState | None
    to_state: JobState
    actor: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class ComponentEnergy:
    """What one part of the machine (gpu, cpu, dram) used for a job, and how that is known."""

    joules: float
    method: str
    measured: bool  # False: an estimate (the method says from what)


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the rest of fabriek sees it (services build it from a database row)."""

    id: int
    name: str
    project: str
    user: str
    state: JobState
    argv: list[str]
    resources: Resources
    time_limit_s: int
    workdir_digest: str | None
    backend: str
    submitted_at: datetime
    admitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    cancel_requested: bool
    gpu_ids: list[int]
    exit_code: int | None
    signal: int | None
    wall_s: float | None
    cpu_s: float | None
    max_rss_bytes: int | None
    gpu_s: float | None
    queue_position: int | None = None
    events: tuple[JobEvent, ...] = ()
    allocation_id: int | None = None
    hold_gpu_hours: float | None = None
    charged_gpu_hours: float | None = None
    pool: str | None = None  # the pool of its allocation; None: no allocation
    preemptible: bool = False
    borrowed: bool = False  # runs on capacity beyond its pool's guarantee
    preempting: bool = False  # asked to stop for a reclaim, still ending
    preemptions: int = 0  # times it was preempted and requeued
    priority: int = 0
    estimated_start_at: datetime | None = None
    energy: dict[str, ComponentEnergy] = field(default_factory=dict)  # empty: not metered
    deadline: datetime | None = None
    green_start_at: datetime | None = None  # held back for a greener hour until then
    facility_kwh: float | None = None  # IT energy x PUE
    water_l: float | None = None
    carbon_kg: float | None = None
    carbon_saved_kg: float | None = None  # against starting at once, where it was held back
    carbon_note: str | None = None
    nodes: int = 1  # `resources` on each
    partition: str | None = None  # as asked for; `backend` says where it was admitted
    # As asked for (None: its partition's default) until it starts; from then on what it got.
    network: Network | None = None

    @property
    def total_gpus(self) -> int:
        return self.resources.gpus * self.nodes


def _check_text(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"the {what} holds text that is not valid Unicode") from None


def flexible_deadline(request: JobRequest, now: datetime) -> datetime | None:
    """The deadline a flexible job must end by, or None for a job that starts when it can."""
    from datetime import timedelta

    if request.deadline is None and request.flexible_s is None:
        return None
    if request.deadline is not None and request.flexible_s is not None:
        raise InvalidRequest("give a deadline or a flexibility, not both")
    if not request.time_limit_given:
        raise InvalidRequest(
            "a flexible job needs a time limit (--time): its deadline can only be kept if fabriek "
            "knows how long it may run"
        )
    run = timedelta(seconds=request.time_limit_s)
    if request.flexible_s is not None:
        if not 0 < request.flexible_s <= MAX_FLEXIBLE_S:
            raise InvalidRequest(
                f"the flexibility must be more than 0 and at most {MAX_FLEXIBLE_S // 86400} days"
            )
        return now + timedelta(seconds=request.flexible_s) + run
    deadline = request.deadline
    assert deadline is not None
    if deadline.tzinfo is None:
        raise InvalidRequest("the deadline needs a time zone (e.g. 2026-12-01T08:00+01:00)")
    if deadline < now + run:
        raise InvalidRequest(
            f"the deadline {deadline.isoformat(timespec='minutes')} is before the job could "
            f"finish: started now, its time limit of {request.time_limit_s}s ends "
            f"{(now + run).isoformat(timespec='minutes')}"
        )
    if deadline > now + run + timedelta(seconds=MAX_FLEXIBLE_S):
        raise InvalidRequest(
            f"the deadline is too far ahead: at most {MAX_FLEXIBLE_S // 86400} days beyond the "
            "time limit"
        )
    return deadline
