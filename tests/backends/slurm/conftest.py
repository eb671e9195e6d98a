"""Private Slurm clusters for the Slurm tests, one per test session (devcluster.py): two nodes in
network namespaces with the job completion log, and one node with accounting (slurmdbd, sacct).

Jobs launched as their project run as its uid (`fp<uid>`), which must reach the cluster's
configuration, its munge socket and the shared directory: clusters and shared directories live in
folders every user may pass through (`open_dir`), not under pytest's own (root's, 0700).

Skipped where no cluster can start here (not root, Slurm not installed), except under
FABRIEK_REQUIRE_SLURM=1 (CI), where that fails: the Slurm tests are required there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabriek.backends.slurm import devcluster
from fabriek.backends.slurm.config import SlurmPartition
from fabriek.backends.slurm.devcluster import DevCluster, partitions_toml

__all__ = ["open_dir", "partition_on", "partitions_toml", "require_slurm"]


def make_open_dir(prefix: str) -> Path:
    """A new folder under /tmp that every user may pass through (0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder for a test's shared directory that projects' uids may pass through."""
    path = make_open_dir("fabriek-shared-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def require_slurm(reason: str | None) -> None:
    """Skip (or, under FABRIEK_REQUIRE_SLURM=1, fail) when a dev cluster cannot start here."""
    if reason is None:
        return
    if os.environ.get("FABRIEK_REQUIRE_SLURM") == "1":
        pytest.fail(f"FABRIEK_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def slurm_pair() -> Iterator[DevCluster]:
    """Two nodes (the second in a network namespace), no accounting: the completion log."""
    require_slurm(devcluster.unavailable(nodes=2))
    root = make_open_dir("fabriek-pair-")
    try:
        with devcluster.start(root, nodes=2) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_accounted() -> Iterator[DevCluster]:
    """One node with slurmdbd and MariaDB: sacct answers."""
    require_slurm(devcluster.unavailable(accounting=True))
    root = make_open_dir("fabriek-acct-")
    try:
        with devcluster.start(root, accounting=True) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
        python=devcluster.job_python(),
    )
    settings.update(changes)
    return SlurmPartition(**settings)  # type: ignore[arg-type]
