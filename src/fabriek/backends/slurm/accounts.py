"""Slurm's accounts kept in step with fabriek's tenancy, on a cluster with accounting whose
operator lets fabriek manage them (`manage_accounts`, the default; docs/slurm.md).

What fabriek wants on the cluster, from the roster (core/roster.py):
- each organisation an account `org@NAME` under root ('@' is in no project name: the two never
  meet);
- each project an account under its organisation's: the project's name in lower case (Slurm keeps
  account names so), or `NAME+UID` where that name is taken (by a project whose name differs only
  in case and took it first, or by an account that is not fabriek's);
- each member of a project a user association with the project's account, each member of an
  organisation one with the organisation's, and the user the project's jobs run as (its `fp<uid>`;
  the server's own user where the server is not root) one with the project's account.

An account fabriek makes carries a description naming what it stands for ("fabriek project NAME
uid UID", "fabriek organisation NAME"), by which fabriek finds it again, renamed or not: an account
without that description is never used, changed or removed. The user associations fabriek added
are recorded in the shared directory (accounts.json, the server's alone); only those are removed,
when their member leaves, and a user fabriek made whose default account went gets another of its
own. Accounts are never removed: projects and organisations are not. Every command is sacctmgr
with an argument list (-i: no questions asked), never a shell.

`Accounts.apply` reads what the cluster has, plans the difference (`plan`, pure), applies it and
says which account each project's jobs are submitted with (`sbatch --account`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fabriek.core.roster import Roster, RosterProject

log = logging.getLogger(__name__)

ORG_PREFIX = "org@"
RECORD = "accounts.json"  # in the shared directory: what fabriek added, and on which cluster

Association = tuple[str, str]  # (account, user)
Call = Callable[[list[str]], subprocess.CompletedProcess[str]]


def org_account(organisation: str) -> str:
    return f"{ORG_PREFIX}{organisation}"


# Slurm keeps descriptions in lower case, too: marks are compared so (the uid makes a project's
# its own).
def org_mark(organisation: str) -> str:
    return f"fabriek organisation {organisation}".lower()


def project_mark(project: RosterProject) -> str:
    return f"fabriek project {project.name} uid {project.uid}".lower()


@dataclass(frozen=True)
class Existing:
    """What the cluster's accounting has now."""

    descriptions: dict[str, str]  # every account (of every cluster) -> its description
    on_cluster: set[str]  # accounts associated with this cluster
    associations: set[Association]  # user associations on this cluster
    users: dict[str, str]  # every user -> its default account ("" for none)


@dataclass
class Plan:
    """What to change, and what each project's account will be once changed."""

    accounts: dict[str, str] = field(default_factory=dict)  # project -> its account
    add_accounts: list[tuple[str, str, str, str]] = field(default_factory=list)
    # (account, parent, description, organisation), parents first
    add: dict[str, list[str]] = field(default_factory=dict)  # user -> accounts to join
    remove: list[Association] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # project -> why it has no account


def slurm_user(name: str) -> str:
    """Slurm keeps user names in lower case."""
    return name.lower()


def plan(
    roster: Roster,
    existing: Existing,
    *,
    runner: Callable[[RosterProject], str],
    recorded: set[Association],
) -> Plan:
    """The changes that bring the cluster to the roster, touching only fabriek's own accounts
    and removing only the associations in `recorded` (those fabriek added)."""
    result = Plan()
    marked = {text.lower(): name for name, text in existing.descriptions.items()}
    orgs: dict[str, str] = {}  # organisation -> its account, where fabriek may use it
    org_problems: dict[str, str] = {}
    for org in roster.organisations:
        name = org_account(org.name)
        description = existing.descriptions.get(name)
        if description is not None and description.lower() != org_mark(org.name):
            org_problems[org.name] = (
                f"the Slurm account {name} exists and is not fabriek's ({description!r})"
            )
            continue
        orgs[org.name] = name
        if name not in existing.on_cluster:
            result.add_accounts.append((name, "root", org_mark(org.name), org.name))
    # Projects that have an account of fabriek's keep it; the others, oldest (lowest uid)
    # first, take their name where it is free.
    projects = sorted(roster.projects, key=lambda p: p.uid)
    for project in projects:
        if project.organisation in org_problems:
            result.problems[project.name] = org_problems[project.organisation]
        elif project.organisation not in orgs:
            result.problems[project.name] = f"its organisation {project.organisation!r} is unknown"
        elif project_mark(project) in marked:
            result.accounts[project.name] = marked[project_mark(project)]
    claimed = set(result.accounts.values())
    for project in projects:
        if project.name in result.accounts or project.name in result.problems:
            continue
        plain = project.name.lower()
        free = [
            name
            for name in (plain, f"{plain}+{project.uid}")
            if name not in existing.descriptions and name not in claimed
        ]
        if not free:
            result.problems[project.name] = (
                f"the Slurm accounts {plain} and {plain}+{project.uid} are taken by accounts "
                "that are not fabriek's"
            )
            continue
        result.accounts[project.name] = free[0]
        claimed.add(free[0])
    wanted: set[Association] = set()
    for org in roster.organisations:
        if org.name in orgs:
            wanted |= {(orgs[org.name], slurm_user(user)) for user in org.members}
    for project in projects:
        account = result.accounts.get(project.name)
        if account is None:
            continue
        if account not in existing.on_cluster:
            result.add_accounts.append(
                (account, orgs[project.organisation], project_mark(project), project.organisation)
            )
        wanted |= {(account, slurm_user(user)) for user in project.members}
        wanted.add((account, runner(project)))
    for account, user in sorted(wanted - existing.associations):
        result.add.setdefault(user, []).append(account)
    result.remove = sorted((recorded & existing.associations) - wanted)
    return result


class Accounts:
    """Applies plans to one cluster through `call` (sacctmgr and scontrol, argument lists) and
    remembers which account each project's jobs are submitted with. Thread-safe."""

    def __init__(self, call: Call, record: Path, runner: Callable[[RosterProject], str]) -> None:
        self.call = call
        self.record = record
        self.runner = runner
        self._accounts: dict[str, str] = {}
        self._problems: dict[str, str] = {}
        self._cluster: str | None = None
        self._lock = threading.Lock()

    def account_of(self, project: str) -> str | None:
        """The project's account, as the last `apply` left it (None: it has none yet)."""
        return self._accounts.get(project)

    def problem_of(self, project: str) -> str | None:
        """Why the last `apply` could not give the project an account, if it could not."""
        return self._problems.get(project)

    def apply(self, roster: Roster) -> Plan:
        """Bring the cluster's accounts to `roster`. Idempotent: a second call with the same
        roster changes nothing. Raises RuntimeError where the cluster cannot be read; a
        command that fails is logged and leaves its project without an account (problem_of)."""
        with self._lock:
            cluster = self._cluster_name()
            existing = self._read(cluster)
            recorded, made = self._load(cluster)
            todo = plan(roster, existing, runner=self.runner, recorded=recorded)
            failed: dict[str, str] = {}  # account -> why its projects cannot use it
            for account, parent, description, organisation in todo.add_accounts:
                if parent in failed:
                    failed[account] = failed[parent]
                    continue
                why = self._sacctmgr(
                    "add", "account", account, f"cluster={cluster}", f"parent={parent}",
                    f"description={description}", f"organization={organisation}",
                )  # fmt: skip
                if why is not None:
                    failed[account] = why
            runners = {
                (todo.accounts[p.name], self.runner(p))
                for p in roster.projects
                if p.name in todo.accounts
            }
            added: set[Association] = set()
            for user, accounts in todo.add.items():
                accounts = [a for a in accounts if a not in failed]
                if not accounts:
                    continue
                argv = ["add", "user", user, f"account={','.join(accounts)}", f"cluster={cluster}"]
                new = user not in existing.users
                if new:
                    argv.append(f"defaultaccount={accounts[0]}")
                why = self._sacctmgr(*argv)
                if why is None:
                    added |= {(a, user) for a in accounts}
                    made |= {user} if new else set()
                else:  # a project whose jobs' user is not associated cannot use its account
                    failed |= {a: why for a in accounts if (a, user) in runners}
            removed = {
                (account, user)
                for account, user in todo.remove
                if self._sacctmgr(
                    "remove", "user", user, f"account={account}", f"cluster={cluster}"
                )
                is None
            }
            self._repair_defaults(made, removed, (existing.associations | added) - removed)
            self._save(cluster, (recorded | added) - removed, made)
            self._accounts = {p: a for p, a in todo.accounts.items() if a not in failed}
            self._problems = {
                p.name: todo.problems.get(p.name) or failed[todo.accounts[p.name]]
                for p in roster.projects
                if p.name not in self._accounts
            }
            for project, why in self._problems.items():
                log.warning("project %s has no Slurm account on %s: %s", project, cluster, why)
            return todo

    # --- reading and writing -------------------------------------------------------------------
    def _cluster_name(self) -> str:
        if self._cluster is None:
            done = self.call(["scontrol", "show", "config"])
            for line in done.stdout.splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "ClusterName" and value.strip():
                    self._cluster = value.strip()
                    break
            else:
                raise RuntimeError(
                    f"scontrol show config names no ClusterName: {done.stderr.strip()}"
                )
        return self._cluster

    def _show(self, *argv: str) -> list[list[str]]:
        done = self.call(["sacctmgr", "-n", "-P", "show", *argv])
        if done.returncode != 0:
            raise RuntimeError(f"sacctmgr show {argv[0]} failed: {done.stderr.strip()}")
        return [line.split("|") for line in done.stdout.splitlines() if line]

    def _read(self, cluster: str) -> Existing:
        descriptions = {
            row[0]: "|".join(row[1:]) for row in self._show("account", "format=account,description")
        }
        on_cluster: set[str] = set()
        associations: set[Association] = set()
        for account, user in self._show("assoc", f"cluster={cluster}", "format=account,user"):
            if user:
                associations.add((account, user))
            else:
                on_cluster.add(account)
        users = dict(
            (row[0], row[1]) for row in self._show("user", "format=user,defaultaccount") if row
        )
        return Existing(descriptions, on_cluster, associations, users)

    def _sacctmgr(self, *argv: str) -> str | None:
        """Run `sacctmgr -i ARGV`; None where it did it (or it had been done), else why not."""
        done = self.call(["sacctmgr", "-i", *argv])
        said = f"{done.stdout}\n{done.stderr}".strip()
        if done.returncode == 0 or "Nothing new added" in said:
            log.info("sacctmgr %s", " ".join(argv))
            return None
        log.warning("sacctmgr %s failed: %s", " ".join(argv), said)
        return f"sacctmgr {argv[0]} {argv[1]} {argv[2]} failed: {said}"

    def _repair_defaults(
        self, made: set[str], removed: set[Association], left: set[Association]
    ) -> None:
        """A user fabriek made whose default account it just removed them from gets another
        of theirs (Slurm leaves none, and their own jobs without --account would be refused)."""
        for user in sorted({u for _, u in removed} & made):
            theirs = sorted(a for a, u in left if u == user)
            if theirs:
                self._sacctmgr("modify", "user", user, "set", f"defaultaccount={theirs[0]}")

    def _load(self, cluster: str) -> tuple[set[Association], set[str]]:
        try:
            data = json.loads(self.record.read_text())
        except FileNotFoundError:
            return set(), set()
        except (OSError, ValueError) as exc:
            # Forgetting what fabriek added only means it removes nothing it made before.
            log.warning("cannot read %s: %s; starting a new record", self.record, exc)
            return set(), set()
        mine = data.get(cluster, {}) if isinstance(data, dict) else {}
        pairs = {(str(a), str(u)) for a, u in mine.get("associations", [])}
        return pairs, {str(u) for u in mine.get("users", [])}

    def _save(self, cluster: str, associations: Iterable[Association], users: set[str]) -> None:
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}
        data[cluster] = {
            "associations": sorted([a, u] for a, u in associations),
            "users": sorted(users),
        }
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(f".{self.record.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.record)
