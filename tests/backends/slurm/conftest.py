"""Private Slurm clusters for the Slurm tests, one per test session (devcluster.py): two nodes in
network namespaces with the job completion log, and one node with accounting (slurmdbd, sacct).

Skipped where no cluster can start here (not root, Slurm not installed), except under
FABRIEK_REQUIRE_SLURM=1 (CI), where that fails: the Slurm tests are required there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabriek.backends.slurm import devcluster
from fabriek.backends.slurm.config import SlurmPartition
from fabriek.backends.slurm.devcluster import DevCluster, partitions_toml

__all__ = ["partition_on", "partitions_toml", "require_slurm"]


def require_slurm(reason: str | None) -> None:
    """Skip (or, under FABRIEK_REQUIRE_SLURM=1, fail) when a dev cluster cannot start here."""
    if reason is None:
        return
    if os.environ.get("FABRIEK_REQUIRE_SLURM") == "1":
        pytest.fail(f"FABRIEK_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def slurm_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """Two nodes (the second in a network namespace), no accounting: the completion log."""
    require_slurm(devcluster.unavailable(nodes=2))
    with devcluster.start(tmp_path_factory.mktemp("slurm-pair"), nodes=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_accounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """One node with slurmdbd and MariaDB: sacct answers."""
    require_slurm(devcluster.unavailable(accounting=True))
    with devcluster.start(tmp_path_factory.mktemp("slurm-acct"), accounting=True) as cluster:
        yield cluster


def partition_on(
    cluster: DevCluster, shared: Path, *, name: str = "slurm", **changes: object
) -> SlurmPartition:
    """fabriek's view of the cluster's partition, with its shared directory at `shared`."""
    settings: dict[str, object] = dict(
        name=name,
        partition=cluster.partition,
        nodes=len(cluster.nodes),
        cpus_per_node=cluster.cpus_per_node,
        memory_per_node=cluster.memory_mb_per_node * 2**20,
        shared_dir=shared,
        slurm_conf=cluster.conf,
        accounting=cluster.accounting,
        jobcomp_file=cluster.jobcomp_file,
        grace_seconds=2.0,
    )
    settings.update(changes)
    return SlurmPartition(**settings)  # type: ignore[arg-type]
