"""The partitions file: what an operator writes, and a clear error for each mistake in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabriek.backends.slurm.config import load_partitions
from fabriek.core.errors import InvalidRequest

GOOD = """
local = false
[slurm.gpu-h100]
partition = "gpu"
nodes = 16
cpus_per_node = 64
memory_per_node = "480G"
gpus_per_node = 4
gpu_type = "H100"
shared_dir = "/shared/fabriek"
account = "fabriek"
qos = "normal"
accounting = true
grace_seconds = 45
billing_weight = 2

[slurm.cpu]
nodes = 4
cpus_per_node = 128
memory_per_node = 262144
shared_dir = "/shared/fabriek"
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "partitions.toml"
    path.write_text(text)
    return load_partitions(path)


def test_a_file_with_two_slurm_partitions(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD)
    assert config.local is False
    gpu, cpu = config.slurm
    assert (gpu.name, gpu.partition, gpu.nodes, gpu.gpus_per_node) == ("gpu-h100", "gpu", 16, 4)
    assert gpu.memory_per_node == 480 * 2**30
    assert (gpu.gpu_type, gpu.account, gpu.qos, gpu.accounting) == (
        "H100",
        "fabriek",
        "normal",
        True,
    )
    assert (gpu.grace_seconds, gpu.billing_weight) == (45.0, 2.0)
    assert (cpu.partition, cpu.gpus_per_node, cpu.gpu_type, cpu.accounting) == ("cpu", 0, "", False)
    assert cpu.memory_per_node == 262144  # a plain number is bytes


def test_no_file_means_this_machine_alone() -> None:
    config = load_partitions(None)
    assert (config.local, config.slurm) == (True, ())


BASE = '[slurm.p]\nnodes = 1\ncpus_per_node = 1\nmemory_per_node = "1G"\nshared_dir = "/s"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("local = 1\n", "`local` must be true or false"),
        ("locale = true\n", "unknown key(s) locale"),
        ("local = false\n", "no partition left"),
        ("[slurm\n", "not valid TOML"),
        (BASE.replace("nodes = 1", 'nodes = "two"'), "`nodes` has the wrong type"),
        (BASE.replace("nodes = 1", "nodes = 0"), "`nodes` must be at least 1"),
        (BASE.replace("cpus_per_node = 1\n", ""), "`cpus_per_node` is required"),
        (BASE.replace('"1G"', '"lots"'), "`memory_per_node`: cannot read memory size"),
        (BASE.replace('"/s"', '"relative/dir"'), "`shared_dir` must be an absolute path"),
        (BASE + 'account = "a b"\n', "`account` = 'a b' is not a Slurm name"),
        (BASE + "gpus = 4\n", "unknown key(s) gpus"),
        (BASE + "grace_seconds = -1\n", "`grace_seconds` >= 0"),
        (BASE + "accounting = 1\n", "`accounting` has the wrong type"),
        (BASE.replace("[slurm.p]", "[slurm.local]"), "invalid name"),
        (BASE.replace("[slurm.p]", '[slurm."a;b"]'), "invalid name"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert str(tmp_path / "partitions.toml") in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read the partitions file"):
        load_partitions(tmp_path / "nope.toml")


def test_accounts_are_managed_with_accounting_unless_mapped_elsewhere(tmp_path: Path) -> None:
    (managed,) = load(tmp_path, BASE + "accounting = true\n").slurm
    assert managed.manages_accounts and managed.project_accounts == {}
    (without,) = load(tmp_path, BASE).slurm
    assert not without.manages_accounts  # no accounting: no accounts to keep
    mapped_text = (
        BASE + 'accounting = true\nmanage_accounts = false\nproject_accounts = { alpha = "phys" }\n'
    )
    (mapped,) = load(tmp_path, mapped_text).slurm
    assert not mapped.manages_accounts and mapped.project_accounts == {"alpha": "phys"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('accounting = true\nproject_accounts = { a = "b" }\n', "set `manage_accounts = false`"),
        ('project_accounts = { "a;b" = "x" }\n', "'a;b' is not a project name"),
        ('project_accounts = { a = "x y" }\n', "a = 'x y' is not a Slurm account"),
        ("project_accounts = 3\n", "`project_accounts` must be a table"),
        ("manage_accounts = 1\n", "`manage_accounts` has the wrong type"),
    ],
)
def test_account_mistakes_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load(tmp_path, BASE + extra)
    assert message in str(caught.value)
