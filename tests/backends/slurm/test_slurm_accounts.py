"""Slurm's accounts kept in step with fabriek's tenancy (backends/slurm/accounts.py): the plan's
rules, table by table, then against a real slurmdbd: made once, changed by membership, nothing
removed that fabriek did not add, and an operator's cluster left alone when management is off."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fabriek.backends.base import LaunchSpec
from fabriek.backends.slurm.accounts import Existing, plan
from fabriek.backends.slurm.backend import SlurmBackend, SlurmError
from fabriek.backends.slurm.devcluster import DevCluster
from fabriek.core.identity import Identity
from fabriek.core.jobs import Resources
from fabriek.core.roster import Roster, RosterOrganisation, RosterProject
from tests.backends.slurm.conftest import partition_on

MB = 2**20


def org(name: str, *members: str) -> RosterOrganisation:
    return RosterOrganisation(name, frozenset(members))


def project(name: str, uid: int, organisation: str = "acme", *members: str) -> RosterProject:
    return RosterProject(name, organisation, uid, frozenset(members))


def existing(
    descriptions: dict[str, str] | None = None,
    associations: set[tuple[str, str]] | None = None,
) -> Existing:
    described = {"root": "default root account", **(descriptions or {})}
    return Existing(described, set(described), associations or set(), {"root": "root"})


def fp(p: RosterProject) -> str:
    return f"fp{p.uid}"


# --- the plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("projects", "taken", "expected"),
    [
        # A project's account is its name in lower case ...
        ([project("Alpha", 200001)], {}, {"Alpha": "alpha"}),
        # ... or NAME+UID where a project that differs only in case (an older one) has it ...
        (
            [project("alpha", 200002), project("Alpha", 200001)],
            {},
            {"Alpha": "alpha", "alpha": "alpha+200002"},
        ),
        # ... or where an account that is not fabriek's has it;
        ([project("physics", 200001)], {"physics": "the sites own"}, {"physics": "physics+200001"}),
        # an account fabriek made (by its description) stays the project's, whatever came since.
        (
            [project("alpha", 200002), project("Alpha", 200001)],
            {"alpha": "fabriek project alpha uid 200002", "alpha+200001": "fabriek project alpha uid 200001"},
            {"Alpha": "alpha+200001", "alpha": "alpha"},
        ),
    ],
)  # fmt: skip
def test_project_accounts_are_named_once_and_kept(
    projects: list[RosterProject], taken: dict[str, str], expected: dict[str, str]
) -> None:
    todo = plan(Roster((org("acme"),), tuple(projects)), existing(taken), runner=fp, recorded=set())
    assert todo.accounts == expected
    assert todo.problems == {}


def test_organisations_are_parents_and_members_are_associated() -> None:
    alpha = project("alpha", 200001, "acme", "Ann", "ben")
    todo = plan(
        Roster((org("acme", "ann", "carl"),), (alpha,)), existing(), runner=fp, recorded=set()
    )
    assert todo.add_accounts == [
        ("org@acme", "root", "fabriek organisation acme", "acme"),
        ("alpha", "org@acme", "fabriek project alpha uid 200001", "acme"),
    ]
    assert todo.add == {  # user names in lower case, as Slurm keeps them
        "ann": ["alpha", "org@acme"],
        "ben": ["alpha"],
        "carl": ["org@acme"],
        "fp200001": ["alpha"],  # the user its jobs run as
    }
    assert todo.remove == []


def test_only_what_fabriek_recorded_is_removed() -> None:
    alpha = project("alpha", 200001, "acme")  # ann has left; carl was added by the operator
    made = {"org@acme": "fabriek organisation acme", "alpha": "fabriek project alpha uid 200001"}
    there = {("alpha", "ann"), ("alpha", "carl"), ("alpha", "fp200001")}
    todo = plan(
        Roster((org("acme"),), (alpha,)),
        existing(made, there),
        runner=fp,
        recorded={("alpha", "ann"), ("alpha", "fp200001")},
    )
    assert todo.remove == [("alpha", "ann")]
    assert todo.add_accounts == [] and todo.add == {}


def test_an_organisation_account_that_is_not_fabriek_s_is_not_used() -> None:
    todo = plan(
        Roster((org("acme"),), (project("alpha", 200001),)),
        existing({"org@acme": "someone else's"}),
        runner=fp,
        recorded=set(),
    )
    assert todo.accounts == {} and todo.add_accounts == [] and todo.add == {}
    assert "org@acme exists and is not fabriek's" in todo.problems["alpha"]


# --- a real slurmdbd -----------------------------------------------------------------------------
def associations(cluster: DevCluster) -> set[tuple[str, str]]:
    shown = cluster.run("sacctmgr", "-n", "-P", "show", "assoc", "format=account,user").stdout
    return {tuple(line.split("|")) for line in shown.splitlines() if line.split("|")[1]}  # type: ignore[misc]


def accounts(cluster: DevCluster) -> dict[str, str]:
    shown = cluster.run("sacctmgr", "-n", "-P", "show", "account", "format=account,descr").stdout
    return dict(line.split("|", 1) for line in shown.splitlines())


def spec(job_id: int, project_name: str, uid: int) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        name="acct",
        argv=["true"],
        env={},
        resources=Resources(1, 64 * MB, 0),
        gpu_ids=(),
        time_limit_s=60,
        workdir_archive=None,
        instance="a",
        identity=Identity(uid, uid, project_name),
    )


def test_accounts_follow_the_roster_on_a_real_cluster(
    slurm_accounted: DevCluster, open_dir: Path
) -> None:
    c = slurm_accounted
    # What the site has of its own: an account, and an association fabriek will find in one
    # of its accounts later. Neither is fabriek's to remove.
    c.run("sacctmgr", "-i", "add", "account", "tsite", "description=the sites own")
    c.run("sacctmgr", "-i", "add", "user", "tsiteuser", "account=tsite")
    roster = Roster(
        (org("tacme", "tann"),),
        (project("TAlpha", 200010, "tacme", "tann", "tben"), project("tsite", 200011, "tacme")),
    )
    backend = SlurmBackend(partition_on(c, open_dir), roster=lambda: roster)
    backend.sync_accounts()
    assert backend.accounts is not None
    assert backend.accounts.account_of("TAlpha") == "talpha"
    assert backend.accounts.account_of("tsite") == "tsite+200011"  # the site's name is theirs
    made = accounts(c)
    assert made["org@tacme"] == "fabriek organisation tacme"
    assert made["talpha"] == "fabriek project talpha uid 200010"
    assert made["tsite"] == "the sites own"  # untouched
    wanted = {
        ("org@tacme", "tann"),
        ("talpha", "tann"),
        ("talpha", "tben"),
        ("talpha", "fp200010"),
        ("tsite+200011", "fp200011"),
    }
    assert wanted <= associations(c)

    # The same roster again changes nothing: every command it would run is a read.
    before = (accounts(c), associations(c))
    backend.sync_accounts(force=True)
    assert (accounts(c), associations(c)) == before

    # The operator associates someone by hand; then tben leaves the project and tcarl joins.
    c.run("sacctmgr", "-i", "add", "user", "tdora", "account=talpha")
    roster = replace(
        roster, projects=(project("TAlpha", 200010, "tacme", "tann", "tcarl"), roster.projects[1])
    )
    backend.sync_accounts()
    now = associations(c)
    assert ("talpha", "tben") not in now and ("talpha", "tcarl") in now
    assert ("talpha", "tdora") in now  # not fabriek's: kept
    assert ("tsite", "tsiteuser") in now
    record = json.loads((open_dir / "accounts.json").read_text())[c.name]
    assert ["talpha", "tcarl"] in record["associations"]
    assert ["talpha", "tdora"] not in record["associations"]

    # Jobs are submitted with their project's account, and Slurm takes them (it enforces
    # associations here); a project fabriek's roster lacks is refused before anything is written.
    handle = backend.submit(spec(1, "TAlpha", 200010))
    shown = c.run("scontrol", "show", "job", "-o", str(handle["slurm_id"])).stdout
    assert "Account=talpha " in shown and "UserId=fp200010(200010)" in shown
    with pytest.raises(SlurmError, match="project 'nobody' has no Slurm account"):
        backend.submit(spec(2, "nobody", 200012))
    assert not backend.was_launched(spec(2, "nobody", 200012))


def test_a_new_project_gets_its_account_at_its_first_submission(
    slurm_accounted: DevCluster, open_dir: Path
) -> None:
    roster = Roster((org("tnew"),), ())
    backend = SlurmBackend(partition_on(slurm_accounted, open_dir), roster=lambda: roster)
    backend.sync_accounts()
    roster = Roster((org("tnew"),), (project("tfresh", 200013, "tnew"),))  # made just now
    handle = backend.submit(spec(3, "tfresh", 200013))
    shown = slurm_accounted.run("scontrol", "show", "job", "-o", str(handle["slurm_id"])).stdout
    assert "Account=tfresh " in shown


def test_accounts_managed_elsewhere_are_left_alone_and_mapped(
    slurm_accounted: DevCluster, open_dir: Path
) -> None:
    c = slurm_accounted
    c.run("sacctmgr", "-i", "add", "account", "tphysics", "description=the sites own")
    c.run("sacctmgr", "-i", "add", "user", "fp200014", "account=tphysics")
    config = partition_on(
        c, open_dir, manage_accounts=False, project_accounts={"tmapped": "tphysics"}
    )
    roster = Roster((org("tother"),), (project("tmapped", 200014, "tother"),))
    backend = SlurmBackend(config, roster=lambda: roster)
    before = (accounts(c), associations(c))
    backend.keep_accounts()
    backend.sync_accounts(force=True)
    assert (accounts(c), associations(c)) == before  # nothing made, nothing changed
    assert not (open_dir / "accounts.json").exists()
    handle = backend.submit(spec(4, "tmapped", 200014))
    shown = c.run("scontrol", "show", "job", "-o", str(handle["slurm_id"])).stdout
    assert "Account=tphysics " in shown
