"""Everything one fabriek server process holds: settings, database, backend, controller, clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fabriek.backends.base import Backend, Capacity
from fabriek.backends.local.backend import LocalBackend, detect_resources
from fabriek.backends.local.gpus import GpuInfo, inventory_from_setting
from fabriek.backends.slurm.backend import SlurmBackend
from fabriek.backends.slurm.config import load_partitions
from fabriek.core.errors import InvalidRequest
from fabriek.core.identity import (
    DEFAULT_UID_RANGE,
    Network,
    NetworkPolicy,
    UidRange,
    parse_uid_range,
)
from fabriek.core.jobs import Resources
from fabriek.core.units import parse_memory
from fabriek.server.controller.loop import Controller
from fabriek.server.db.engine import make_engine, make_session_factory, reader, transaction
from fabriek.server.services.auth import AuthEpoch, TokenCache, watch_auth_changes
from fabriek.server.services.refusals import RefusalLog
from fabriek.server.services.retention import Policy, Retention
from fabriek.server.services.roster import roster_reader
from fabriek.server.services.workdirs import limits_of
from fabriek.settings import Settings


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    readers: sessionmaker[Session]
    backend: LocalBackend  # this machine's, also where it runs no jobs (not in `backends`)
    controller: Controller
    clock: Callable[[], datetime]
    # Partition name -> its backend: `local` (unless the partitions file turns it off) and
    # each Slurm partition.
    backends: dict[str, Backend] = field(default_factory=dict)
    # Tokens checked recently, valid while the server's AuthEpoch (tokens.epoch) stands.
    tokens: TokenCache = field(default_factory=TokenCache)
    # How a request wakes the controller: directly in the process that runs it, by a message
    # from the API worker processes (see fabriek.server.workers).
    waker: Callable[[bool], None] | None = None
    # Refused attempts, rate-limited into the audit trail (services.refusals).
    refusals: RefusalLog | None = None
    # The uids projects are given (settings.uid_range, checked).
    uids: UidRange = field(default_factory=lambda: parse_uid_range(DEFAULT_UID_RANGE))

    def wake(self, *, submission: bool = False) -> None:
        if self.waker is not None:
            self.waker(submission)
        else:
            self.controller.wake(submission=submission)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self.readers() as session:
            yield session

    def partitions(self) -> dict[str, Capacity]:
        """Each partition's capacity, with the operator's network policy for it."""
        return self.controller.capacities()

    def backend_for(self, partition: str) -> Backend:
        """The backend a job admitted to `partition` ran on (this machine's for a job that was
        never admitted, which has no files anyway)."""
        return self.backends.get(partition) or self.backend

    def close(self) -> None:
        if self.refusals is not None:
            self.refusals.close()
        self.controller.stop()
        self.backend.launcher.close()
        self.engine.dispose()


def detect_machine(settings: Settings) -> tuple[Resources, list[GpuInfo]]:
    """The local backend's CPUs, memory and GPUs: as declared in the settings, else detected."""
    memory = parse_memory(settings.memory) if settings.memory else None
    return detect_resources(settings.cpus, memory), inventory_from_setting(settings.gpus).detect()


def local_network(policy: NetworkPolicy, *, sandbox: bool) -> NetworkPolicy:
    """This machine's network policy: as the partitions file sets it, where the sandbox holds
    each job to its network; without the sandbox every job has the machine's network, and a
    policy below `host` is refused (InvalidRequest) rather than promised."""
    if sandbox:
        return policy
    if policy.limit != Network.HOST or policy.default != Network.HOST:
        raise InvalidRequest(
            "the partitions file gives the local partition a network below host, which only "
            "the sandbox can hold jobs to, and it is off or does not work here (fabriek up "
            "says why): turn it on (FABRIEK_SANDBOX=1, bubblewrap installed) or leave "
            "[local] network and network_limit at host"
        )
    return replace(policy, least=Network.HOST)


def build_runtime(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = system_clock,
    machine: tuple[Resources, list[GpuInfo]] | None = None,
    auth_epoch: AuthEpoch | None = None,
) -> Runtime:
    """Everything a server process needs. `machine` is what detect_machine() found, when the
    caller knows it already, and `auth_epoch` the server's (API workers take both from the main
    process; without one, this process starts its own)."""
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    auth_epoch = auth_epoch if auth_epoch is not None else AuthEpoch()
    watch_auth_changes(sessions, auth_epoch)
    readers = make_session_factory(reader(engine))
    resources, gpus = machine or detect_machine(settings)
    backend = LocalBackend(
        jobs_dir=settings.jobs_dir,
        resources=resources,
        gpus=gpus,
        kill_grace_seconds=settings.kill_grace_seconds,
        # GPUs NVML found are metered by NVML; declared ones (fake:N) have no meter: estimated.
        gpu_energy="nvml" if settings.gpus in (None, "nvml") else "estimate",
        sample_every_s=settings.energy_sample_seconds,
        estimates={
            "cpu_watts_per_core": settings.estimate_cpu_watts_per_core,
            "dram_watts_per_gb": settings.estimate_dram_watts_per_gb,
            "gpu_watts": settings.estimate_gpu_watts,
        },
        workdir_limits=limits_of(settings),
        sandbox=settings.sandbox,
        sandbox_ro_paths=tuple(p for p in settings.sandbox_ro_paths.split(":") if p),
        pids_max=settings.job_pids_max,
        home=settings.home,
    )
    config = load_partitions(settings.partitions_file)
    backends: dict[str, Backend] = {backend.name: backend} if config.local else {}
    # What the sandbox really holds here (bubblewrap found and working), not what was asked for.
    sandboxed = backend.isolation.bwrap is not None
    networks = {backend.name: local_network(config.local_network, sandbox=sandboxed)} | {
        p.name: p.network_policy for p in config.slurm
    }
    for partition in config.slurm:
        backends[partition.name] = SlurmBackend(
            partition,
            sample_every_s=settings.energy_sample_seconds,
            estimates={
                "cpu_watts_per_core": settings.estimate_cpu_watts_per_core,
                "dram_watts_per_gb": settings.estimate_dram_watts_per_gb,
                "gpu_watts": settings.estimate_gpu_watts,
            },
            workdir_limits=limits_of(settings),
            roster=roster_reader(readers),  # its accounts kept in step (controller only)
        )
    controller = Controller(
        sessions=sessions,
        readers=readers,
        backends=backends,
        clock=clock,
        workdirs=settings.workdirs_dir,
        interval=settings.controller_interval_seconds,
        starving_after_s=settings.starving_after_seconds or None,
        networks=networks,
        retention=Retention(
            sessions=sessions,
            readers=readers,
            backends=backends,
            clock=clock,
            policy=Policy.from_settings(settings),
            workdirs=settings.workdirs_dir,
        ),
    )
    backend.on_change = controller.wake
    return Runtime(
        settings,
        engine,
        sessions,
        readers,
        backend,
        controller,
        clock,
        backends,
        tokens=TokenCache(auth_epoch),
        refusals=RefusalLog(sessions, clock=clock, window_s=settings.audit_refusal_window_seconds),
        uids=parse_uid_range(settings.uid_range),
    )
