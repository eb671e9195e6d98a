"""Typed settings for the server, read from FABRIEK_* environment variables when asked, never at import."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fabriek.scheduling.model import STARVING_AFTER_S


def default_home() -> Path:
    """The per-user data directory: $XDG_DATA_HOME/fabriek, else ~/.local/share/fabriek."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabriek"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FABRIEK_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="Data directory: database, uploaded workdirs, job directories and logs.",
    )
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8765, ge=1, le=65535, description="Port the API listens on.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. "
        "Default: SQLite at HOME/fabriek.db.",
    )
    cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs the local backend may hand out. Default: all CPUs of the machine.",
    )
    memory: str | None = Field(
        None,
        description="Memory the local backend may hand out, e.g. 16G. Default: the machine's total "
        "memory less 10% (at most 4G) kept for the system.",
    )
    gpus: str | None = Field(
        None,
        description="GPUs of the local backend. Default: detected through NVML. `none` disables them; "
        "`fake:N:MODEL` declares N fake GPUs (tests and demos on machines without GPUs).",
    )
    kill_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="Between SIGTERM and SIGKILL when a job is cancelled or runs out of time.",
    )
    workdir_max_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1,
        description="Largest workdir an upload may unpack to (bytes: its tar stream, every entry's "
        "headers counted with the data, so at least 512 bytes an entry). Larger belongs in a "
        "dataset.",
    )
    workdir_max_entries: int = Field(
        100_000,
        ge=1,
        description="Most entries (files, directories, links) a workdir archive may hold. Checked "
        "at upload and again where the job unpacks it, the unpacking counted in the job's time.",
    )
    max_request_bytes: int = Field(
        2 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest request body the API reads (bytes), workdir uploads aside (they have "
        "workdir_max_bytes). A job's argv and environment are bounded apart, near what the "
        "kernel's exec accepts (docs/security.md).",
    )
    outputs_download_max_bytes: int = Field(
        10 * 1024**3,
        ge=1,
        description="Most a job's outputs may hold for one download (bytes; files at their full "
        "size, sparse ones too, as that is what is read and sent). Larger is refused (413 "
        "outputs_too_large) before a byte is sent. Measured on 2 cores: a download costs the "
        "server about 2 s of CPU per GiB that does not compress (weights), up to 10 per GiB of "
        "text, next to nothing for a sparse file's holes.",
    )
    outputs_download_max_entries: int = Field(
        100_000,
        ge=1,
        description="Most files, directories and links a job's outputs may hold for one download.",
    )
    keep_work_dirs: bool = Field(
        False,
        description="Keep each job's working copy of its workdir (`work/`) after the job ends "
        "(for debugging); by default it is removed within a minute of the end.",
    )
    outputs_retention_days: float = Field(
        30.0,
        ge=0,
        description="Days a job's outputs and logs are kept after it ends; then they are removed "
        "(audit event job.outputs_removed) and asking for them answers 410 files_removed. "
        "0: kept for ever.",
    )
    project_disk_quota_bytes: int | None = Field(
        None,
        ge=1,
        description="Most disk a project's jobs may hold on this server (bytes, as allocated: "
        "outputs and logs until retention removes them, working copies while jobs run). Checked "
        "once a minute: a project over it has its running jobs stopped (failed: output quota "
        "exceeded) and its submissions refused (409 quota_exceeded). Default: no quota.",
    )
    request_body_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A request body (workdir uploads aside) must have arrived this many seconds "
        "after its request began, or the request is refused (408 timeout).",
    )
    starving_after_seconds: float = Field(
        STARVING_AFTER_S,
        ge=0,
        description="A pending job that has waited this long goes first in its pool's queue, the "
        "longest-waiting first, whatever its project's fair share (0: never). 14 days by default "
        "(docs/scheduling.md says why not Slurm's 7).",
    )
    controller_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest the controller sleeps between passes when nothing wakes it.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Processes serving the API. 1: one process runs the API, the controller and "
        "the local backend; more: that many API workers beside the main process. Default: one per "
        "CPU, at most 4.",
    )
    audit_refusal_window_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Refused attempts (a refused token, a 403 or 404 answered to a signed-in "
        "user) are audited once per client or user and kind in each window of this many seconds; "
        "the rest of the window is written as one `.repeated` event with their count.",
    )
    require_allocation: bool = Field(
        False,
        description="GPU jobs must name an allocation to be charged to (a production factory); "
        "off for the embedded default, where jobs run uncharged.",
    )
    energy_sample_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="How often each job's energy is sampled (NVML, RAPL), so energy is placed in "
        "the hour it was used. GPUs without an energy counter are sampled every second.",
    )
    estimate_cpu_watts_per_core: float = Field(
        12.0,
        gt=0,
        le=1000,
        description="Where RAPL cannot be read, a job's CPU energy is estimated as this many watts "
        "per busy core (Green Algorithms' default for an unknown CPU; set your CPUs' TDP per core).",
    )
    estimate_dram_watts_per_gb: float = Field(
        0.3725,
        gt=0,
        le=100,
        description="Where RAPL has no dram zone: watts per GB of memory a job asked for.",
    )
    estimate_gpu_watts: float = Field(
        700.0,
        gt=0,
        le=5000,
        description="GPUs NVML cannot meter (declared fake ones): their rated power, watts.",
    )
    partitions_file: Path | None = Field(
        None,
        description="A TOML file naming the Slurm partitions fabriek drives beside (or instead "
        "of) this machine (docs/slurm.md). Default: this machine alone, partition `local`.",
    )
    uid_range: str = Field(
        "200000-299999",
        description="POSIX uids (and gids) fabriek gives projects, FIRST-LAST: each project gets "
        "one when it is made, never reused, and every process of its jobs runs as it when the "
        "server runs as root (docs/security.md). Keep the range free of the site's own users.",
    )
    sandbox: bool = Field(
        True,
        description="Run each local job in its own sandbox (bubblewrap: its own mounts, "
        "processes, network namespace and cgroup limits). Off only for a machine without "
        "bubblewrap, where every tenant's job then sees the whole machine; `fabriek up` says so.",
    )
    sandbox_ro_paths: str = Field(
        "",
        description="More paths each sandboxed job sees read-only, separated by ':' (a site's "
        "software tree, e.g. /cvmfs:/apps). The system's own (/usr, /etc, /opt, ...) are always "
        "there; /home, /root, /run, /var and /srv are not.",
    )
    job_pids_max: int = Field(
        8192,
        ge=64,
        description="Most processes and threads one job may have at once (its cgroup's pids "
        "limit): a fork bomb stops there, the machine and other jobs carry on.",
    )
    require_isolation: bool = Field(
        False,
        description="Refuse to start unless jobs are fully isolated: the sandbox works, the "
        "server runs as root (jobs run as their project's uid) and the cgroup controllers "
        "memory, pids and cpu are there to enforce limits.",
    )
    log_level: str = Field("info", description="Log level of the server.")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'fabriek.db'}"

    @property
    def api_processes(self) -> int:
        """Processes serving the API: `workers`, else one per CPU, at most 4. (More than one per
        CPU measured slower on 2 cores: more CPU per request, and SQLite's writer preempted.)"""
        return self.workers or min(4, len(os.sched_getaffinity(0)))

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def workdirs_dir(self) -> Path:
        return self.home / "workdirs"
