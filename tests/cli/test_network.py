"""`fabriek submit --network`, `fabriek status`, `fabriek partitions` and `fabriek project set
--network-limit` against a real server whose partitions file gives this machine's jobs no
network unless they ask (default none, at most loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.cli.test_jobs import make_member, run
from tests.helpers import ServerProcess, start_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("network")
    partitions = base / "partitions.toml"
    partitions.write_text('[local]\nnetwork = "none"\nnetwork_limit = "loopback"\n')
    proc = start_server(base / "home", FABRIEK_PARTITIONS_FILE=str(partitions))
    yield proc
    proc.stop()


def _status(server: ServerProcess, job_id: str) -> dict[str, str]:
    """`fabriek status`'s rows, by name."""
    rows = {}
    for line in server.cli("status", job_id).stdout.splitlines():
        key, _, value = line.strip().partition("  ")
        rows[key] = value.strip()
    return rows


def test_up_and_partitions_say_what_the_partition_allows(server: ServerProcess) -> None:
    assert "partition local: this machine" in server.log.read_text()
    assert "; network none (at most loopback)" in server.log.read_text()
    table = server.cli("partitions").stdout
    assert "NETWORK" in table and "none (at most loopback)" in table


def test_submit_with_a_network_and_see_it_in_status(server: ServerProcess) -> None:
    r = server.cli("submit", "--network", "loopback", "--no-workdir", "--wait", "--", "true")
    assert r.returncode == 0, r.stderr
    job_id = r.stderr.split("submitted job ")[1].split()[0]
    assert _status(server, job_id)["network"] == "loopback"
    # Without --network: the partition's default, decided when it starts.
    default = server.cli("submit", "--no-workdir", "--parsable", "--", "true").stdout.strip()
    assert json.loads(server.cli("status", default, "--json").stdout)["network"] in (None, "none")
    wait_for(lambda: _status(server, default)["network"] == "none", what="its network shown")


def test_asking_for_more_or_for_nonsense(server: ServerProcess) -> None:
    wrong = server.cli("submit", "--network", "web", "--no-workdir", "--", "true")
    assert (
        wrong.returncode == 2 and "'web' is not one of 'none', 'loopback', 'host'" in wrong.stderr
    )
    more = server.cli("submit", "--network", "host", "--no-workdir", "--", "true")
    assert more.returncode == 3, more.stderr
    assert "no partition offers network host (they offer: local none or loopback)" in (
        " ".join(more.stderr.split())
    )


def test_operators_lock_a_project(server: ServerProcess) -> None:
    nina = make_member(server, "nina", "nlp")
    shown = server.cli("project", "show", "nlp").stdout
    assert "network: as its partitions allow (not locked)" in shown
    refused = run(nina, "project", "set", "nlp", "--network-limit", "none")
    assert refused.returncode == 3 and "only operators lock" in refused.stderr
    r = server.cli("project", "set", "nlp", "--network-limit", "none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "project nlp: network locked to none at most, by an operator"
    assert "network: locked to none at most" in run(nina, "project", "show", "nlp").stdout
    assert (
        json.loads(run(nina, "project", "show", "nlp", "--json").stdout)["project"]["network_limit"]
        == "none"
    )
    more = run(nina, "submit", "--network", "loopback", "--no-workdir", "--", "true")
    assert more.returncode == 3
    assert "project 'nlp' is locked to network none by an operator" in " ".join(more.stderr.split())
    assert run(nina, "submit", "--network", "none", "--no-workdir", "--", "true").returncode == 0
    nothing = server.cli("project", "set", "nlp")
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    lifted = server.cli("project", "set", "nlp", "--network-limit", "host")
    assert "network as its partitions allow (not locked)" in lifted.stdout
