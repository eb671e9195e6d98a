"""The factory's partitions: which Slurm partitions fabriek drives, and whether this machine runs
jobs too. Read from a TOML file (FABRIEK_PARTITIONS_FILE; docs/slurm.md):

```toml
local = false                  # this machine runs no jobs (default: true); or a table:
# [local]                      # this machine runs jobs, with a network policy
# network = "loopback"         # what its jobs get when they ask for none (default: host)
# network_limit = "loopback"   # the most they may ask for (default: host)

[slurm.gpu-h100]               # fabriek's name for the partition
partition = "gpu"              # Slurm's name (default: the same)
nodes = 16
cpus_per_node = 64
memory_per_node = "480G"
gpus_per_node = 4
gpu_type = "H100"
shared_dir = "/shared/fabriek" # seen at this path by this server and every node
account = "fabriek"            # optional: sbatch --account
qos = "normal"                 # optional: sbatch --qos
accounting = true              # slurmdbd answers sacct; fabriek then keeps an account per
                               # organisation and project (sacctmgr), unless:
manage_accounts = false        # accounts are managed elsewhere: map projects to them
project_accounts = { alpha = "physics-gpu" }  # project -> Slurm account (else `account`)
network = "none"               # optional: jobs that ask for none get this (default: host)
network_limit = "loopback"     # optional: the most a job may ask for (default: host)
```
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fabriek.core.errors import InvalidRequest
from fabriek.core.identity import Network, NetworkPolicy, least
from fabriek.core.jobs import PARTITION_NAME
from fabriek.core.tenancy import PROJECT_NAME
from fabriek.core.units import parse_memory

_SLURM_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class SlurmPartition:
    name: str  # fabriek's name for it
    partition: str  # Slurm's name
    nodes: int
    cpus_per_node: int
    memory_per_node: int  # bytes
    shared_dir: Path
    gpus_per_node: int = 0
    gpu_type: str = ""
    account: str | None = None
    qos: str | None = None
    # What its jobs may reach (core.identity.Network): given to a job that asks for none, and
    # the most one may ask for.
    network: Network = Network.HOST
    network_limit: Network = Network.HOST
    python: str = field(default_factory=lambda: sys.executable)  # on the nodes
    slurm_conf: Path | None = None  # SLURM_CONF for the client commands; None: Slurm's default
    bin_dir: Path | None = None  # where sbatch, squeue, ... are; None: PATH
    accounting: bool = False  # sacct answers (slurmdbd): exit codes, usage, energy from it
    jobcomp_file: Path | None = None  # JobCompType=jobcomp/filetxt's file, read if sacct is off
    grace_seconds: float = 30.0  # between SIGTERM and the hard cancel
    billing_weight: float = 1.0
    # Energy: the wrapper meters each node where fabriek.metering imports there (from
    # `fabriek_path`, default: where this server's fabriek is); GPUs through NVML or estimated.
    metering: bool = True
    gpu_energy: str = "nvml"  # or "estimate"
    fabriek_path: tuple[str, ...] = ()
    consumed_energy: bool = True  # sacct's ConsumedEnergy replaces estimated CPU and memory
    # With accounting: fabriek keeps Slurm's accounts in step with its tenancy (an account per
    # organisation and project, members associated; backends/slurm/accounts.py). Off: accounts
    # are the site's, and `project_accounts` maps projects to them (others: `account`).
    manage_accounts: bool = True
    project_accounts: dict[str, str] = field(default_factory=dict)

    @property
    def manages_accounts(self) -> bool:
        return self.accounting and self.manage_accounts

    @property
    def network_policy(self) -> NetworkPolicy:
        return NetworkPolicy(self.network, self.network_limit, SLURM_LEAST_NETWORK)


@dataclass(frozen=True, slots=True)
class Partitions:
    local: bool = True
    slurm: tuple[SlurmPartition, ...] = ()
    local_network: NetworkPolicy = field(default_factory=NetworkPolicy)  # `local`'s


# What a [slurm.NAME] table may hold: every field but the name (the table's own).
_KEYS = {f.name for f in fields(SlurmPartition)} - {"name"}


def load_partitions(path: Path | None) -> Partitions:
    """The partitions the file names; without a file, this machine alone. Raises InvalidRequest
    naming the file, the partition and the key for anything wrong in it."""
    if path is None:
        return Partitions()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidRequest(f"cannot read the partitions file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"local", "slurm"}
    if unknown:
        raise InvalidRequest(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    local = data.get("local", True)
    local_network = NetworkPolicy()
    if isinstance(local, dict):  # [local]: this machine runs jobs, with these settings
        unknown = set(local) - {"network", "network_limit"}
        if unknown:
            raise InvalidRequest(f"{path}: [local]: unknown key(s) {', '.join(sorted(unknown))}")
        local_network, local = _network_policy(f"{path}: [local]", local), True
    if not isinstance(local, bool):
        raise InvalidRequest(f"{path}: `local` must be true or false, or a table [local]")
    slurm = data.get("slurm", {})
    if not isinstance(slurm, dict):
        raise InvalidRequest(f"{path}: `slurm` must be a table of partitions")
    parsed = tuple(_partition(path, name, table) for name, table in slurm.items())
    if not local and not parsed:
        raise InvalidRequest(f"{path}: no partition left: `local = false` and no [slurm.NAME]")
    return Partitions(local, parsed, local_network)


# The wrapper does not confine a job's network on Slurm's nodes yet: every job there has the
# node's network, and a partition may offer nothing less (docs/security.md, "Network").
SLURM_LEAST_NETWORK = Network.HOST


def _network_policy(
    where: str, table: dict[str, Any], floor: Network = Network.NONE
) -> NetworkPolicy:
    """`network` and `network_limit` of a partition's table: the default lies within the
    limit; left out, it is `host` lowered to the limit. Neither may be below `floor`, the
    least network the partition's backend can hold a job to."""

    def get(key: str) -> Network | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: `{key}` is none, loopback or host, not {value!r}")
        return Network.parse(value, f"{where}: `{key}`")

    limit = get("network_limit") or Network.HOST
    default = get("network")
    for key, value in (("network", default), ("network_limit", limit)):
        if value is not None and value.rank < floor.rank:
            raise InvalidRequest(
                f"{where}: `{key}` = {value.value!r}: jobs here cannot be held to less network "
                f'than {floor.value!r} (docs/security.md, "Network")'
            )
    if default is None:
        default = least(Network.HOST, limit)
    elif not limit.allows(default):
        raise InvalidRequest(
            f"{where}: `network` = {default.value!r} is more than `network_limit` = "
            f"{limit.value!r} allows"
        )
    return NetworkPolicy(default, limit)


def _project_accounts(where: str, table: dict[str, Any]) -> dict[str, str]:
    """`project_accounts`: project name -> an existing Slurm account, for a cluster whose
    accounts fabriek does not manage."""
    mapping = table.get("project_accounts", {})
    if not isinstance(mapping, dict):
        raise InvalidRequest(f"{where}: `project_accounts` must be a table of project = account")
    for project, account in mapping.items():
        if not PROJECT_NAME.fullmatch(project):
            raise InvalidRequest(f"{where}: `project_accounts`: {project!r} is not a project name")
        if not isinstance(account, str) or not _SLURM_WORD.fullmatch(account):
            raise InvalidRequest(
                f"{where}: `project_accounts`: {project} = {account!r} is not a Slurm account"
            )
    if mapping and table.get("accounting", False) and table.get("manage_accounts", True):
        raise InvalidRequest(
            f"{where}: `project_accounts` maps projects to accounts managed elsewhere: set "
            "`manage_accounts = false` (with accounting on, fabriek manages them otherwise)"
        )
    return dict(mapping)


def _partition(path: Path, name: str, table: Any) -> SlurmPartition:
    where = f"{path}: [slurm.{name}]"
    if not PARTITION_NAME.fullmatch(name) or name == "local":
        raise InvalidRequest(f"{where}: invalid name (letters, digits, '.', '_', '-'; not local)")
    if not isinstance(table, dict):
        raise InvalidRequest(f"{where}: must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise InvalidRequest(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")

    def get(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise InvalidRequest(f"{where}: `{key}` is required")
            return default
        value = table[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise InvalidRequest(f"{where}: `{key}` has the wrong type ({value!r})")
        return value

    def word(key: str) -> str | None:
        value = get(key, str, None)
        if value is not None and not _SLURM_WORD.fullmatch(value):
            raise InvalidRequest(f"{where}: `{key}` = {value!r} is not a Slurm name")
        return value

    def positive(key: str, default: Any = ...) -> int:
        value = get(key, int, default)
        if value < (0 if default == 0 else 1):
            raise InvalidRequest(f"{where}: `{key}` must be at least {0 if default == 0 else 1}")
        return int(value)

    nodes = positive("nodes")
    cpus = positive("cpus_per_node")
    raw_memory = str(get("memory_per_node", (str, int)))
    try:
        memory = parse_memory(raw_memory)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: `memory_per_node`: {exc}") from None
    gpus = positive("gpus_per_node", 0)
    grace = float(get("grace_seconds", (int, float), 30.0))
    weight = float(get("billing_weight", (int, float), 1.0))
    if grace < 0 or weight <= 0:
        raise InvalidRequest(f"{where}: `grace_seconds` >= 0 and `billing_weight` > 0, please")

    def path_of(key: str) -> Path | None:
        value = get(key, str, None)
        return Path(value) if value else None

    gpu_energy = get("gpu_energy", str, "nvml")
    if gpu_energy not in ("nvml", "estimate"):
        raise InvalidRequest(f"{where}: `gpu_energy` is nvml or estimate, not {gpu_energy!r}")
    fabriek_path = get("fabriek_path", (str, list), [])
    if isinstance(fabriek_path, str):
        fabriek_path = [fabriek_path]
    if not all(isinstance(p, str) and p.startswith("/") for p in fabriek_path):
        raise InvalidRequest(f"{where}: `fabriek_path` must be absolute paths")
    network = _network_policy(where, table, SLURM_LEAST_NETWORK)
    shared = Path(get("shared_dir", str))
    if not shared.is_absolute():
        raise InvalidRequest(f"{where}: `shared_dir` must be an absolute path")
    return SlurmPartition(
        name=name,
        partition=word("partition") or name,
        nodes=nodes,
        cpus_per_node=cpus,
        memory_per_node=memory,
        shared_dir=shared,
        gpus_per_node=gpus,
        gpu_type=get("gpu_type", str, "gpu" if gpus else ""),
        account=word("account"),
        qos=word("qos"),
        network=network.default,
        network_limit=network.limit,
        python=get("python", str, sys.executable),
        slurm_conf=path_of("slurm_conf"),
        bin_dir=path_of("bin_dir"),
        accounting=get("accounting", bool, False),
        jobcomp_file=path_of("jobcomp_file"),
        grace_seconds=grace,
        billing_weight=weight,
        metering=get("metering", bool, True),
        gpu_energy=gpu_energy,
        fabriek_path=tuple(fabriek_path),
        consumed_energy=get("consumed_energy", bool, True),
        manage_accounts=get("manage_accounts", bool, True),
        project_accounts=_project_accounts(where, table),
    )
