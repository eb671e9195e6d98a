"""Who belongs where: the organisations, their projects (each with its POSIX uid) and their
members, by name. What a backend with accounts of its own (Slurm's, through sacctmgr) keeps in step
with fabriek's tenancy; read from the database by server/services/roster.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RosterOrganisation:
    name: str
    members: frozenset[str]  # user names


@dataclass(frozen=True, slots=True)
class RosterProject:
    name: str
    organisation: str
    uid: int  # its POSIX identity (= gid): its jobs run as it
    members: frozenset[str]  # user names


@dataclass(frozen=True, slots=True)
class Roster:
    """Equal rosters say the same: a backend that applied one need not apply an equal one."""

    organisations: tuple[RosterOrganisation, ...] = ()
    projects: tuple[RosterProject, ...] = ()  # only those with a uid

    def project(self, name: str) -> RosterProject | None:
        return next((p for p in self.projects if p.name == name), None)
