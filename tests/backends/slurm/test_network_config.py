"""The partitions file's network keys: each partition's default and limit, and this machine's
(`local = true|false` still works; a `[local]` table sets its network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabriek.backends.slurm.config import load_partitions
from fabriek.core.errors import InvalidRequest
from fabriek.core.identity import Network, NetworkPolicy

BASE = '[slurm.p]\nnodes = 1\ncpus_per_node = 1\nmemory_per_node = "1G"\nshared_dir = "/s"\n'


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "partitions.toml"
    path.write_text(text)
    return load_partitions(path)


def test_defaults_are_the_hosts_network(tmp_path: Path) -> None:
    config = load(tmp_path, "local = true\n" + BASE)
    assert config.local is True
    assert config.local_network == NetworkPolicy(Network.HOST, Network.HOST)
    assert load_partitions(None).local_network == NetworkPolicy()


def test_a_slurm_partition_offers_the_hosts_network_alone(tmp_path: Path) -> None:
    """The wrapper does not confine a job's network on the nodes: nothing less is offered."""
    [p] = load(tmp_path, BASE + 'network = "host"\nnetwork_limit = "host"\n').slurm
    assert p.network_policy == NetworkPolicy(Network.HOST, Network.HOST, Network.HOST)
    assert p.network_policy.offers == {Network.HOST}
    for key in ("network", "network_limit"):
        with pytest.raises(InvalidRequest) as refused:
            load(tmp_path, BASE + f'{key} = "none"\n')
        assert f"[slurm.p]: `{key}` = 'none': jobs here cannot be held to less network than " in (
            str(refused.value)
        )


def test_a_limit_alone_lowers_the_default_to_it(tmp_path: Path) -> None:
    config = load(tmp_path, '[local]\nnetwork_limit = "none"\n')
    assert config.local_network == NetworkPolicy(Network.NONE, Network.NONE)


def test_a_local_table_turns_this_machine_on_with_its_network(tmp_path: Path) -> None:
    config = load(tmp_path, '[local]\nnetwork = "none"\nnetwork_limit = "loopback"\n')
    assert config.local is True and config.slurm == ()
    assert config.local_network == NetworkPolicy(Network.NONE, Network.LOOPBACK)
    empty = load(tmp_path, "[local]\n")
    assert empty.local is True and empty.local_network == NetworkPolicy()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + 'network = "internet"\n', "[slurm.p]: `network` is one of none, loopback, host"),
        (BASE + "network_limit = 0\n", "`network_limit` is none, loopback or host, not 0"),
        (
            '[local]\nnetwork = "host"\nnetwork_limit = "loopback"\n',
            "`network` = 'host' is more than `network_limit` = 'loopback' allows",
        ),
        ('[local]\nnetwork_limit = "web"\n', "[local]: `network_limit` is one of"),
        ('[local]\nnetwork = "host"\nnetwork_limit = "none"\n', "[local]: `network` = 'host'"),
        ("[local]\nenabled = true\n", "[local]: unknown key(s) enabled"),
        ('local = "yes"\n', "`local` must be true or false, or a table [local]"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert str(tmp_path / "partitions.toml") in str(caught.value)
