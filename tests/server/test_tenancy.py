"""Organisations, projects, users and tokens through the services, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from fabriek.core.tenancy import OrgKind, OrgRole, ProjectRole
from fabriek.server.db.models import AuditEventRow, ProjectMemberRow
from fabriek.server.services import tenancy, users
from fabriek.server.services.actors import Actor
from fabriek.server.services.auth import authenticate
from fabriek.server.services.jobs import get_job, list_jobs
from tests.conftest import FrozenClock
from tests.server.factories import make_admin, make_job, make_user


def _org(
    sessions: sessionmaker[Session], actor: Actor, clock: FrozenClock, name: str = "rug", **kw: str
) -> None:
    with sessions() as session, session.begin():
        tenancy.create_organisation(
            session,
            actor=actor,
            name=name,
            display_name=kw.get("display_name", "University of Groningen"),
            kind=OrgKind(kw.get("kind", "university")),
            country=kw.get("country", "NL"),
            region=kw.get("region", "NL11"),
            now=clock(),
        )


def _audit(sessions: sessionmaker[Session], action: str) -> list[dict[str, object]]:
    with sessions() as session:
        return list(
            session.scalars(select(AuditEventRow.details).where(AuditEventRow.action == action))
        )


def test_creator_owns_an_unverified_organisation_that_an_operator_verifies(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    _org(sessions, alice, clock, country="nl", region="nl11")
    with sessions() as session, session.begin():
        org = tenancy.get_organisation(session, actor=alice, name="rug")
        assert (org.my_role, org.verified, org.country, org.region) == (
            OrgRole.OWNER,
            False,
            "NL",
            "NL11",
        )
        with pytest.raises(Forbidden, match="only operators"):
            tenancy.verify_organisation(
                session, actor=alice, name="rug", verified=True, now=clock()
            )
        done = tenancy.verify_organisation(
            session, actor=admin, name="rug", verified=True, now=clock()
        )
        assert done.verified and done.verified_by == "admin"
    # The owner moves it to Friesland: the verification is gone, an operator must look again.
    with sessions() as session, session.begin():
        moved = tenancy.update_organisation(
            session, actor=alice, name="rug", region="NL12", now=clock()
        )
    assert moved.region == "NL12" and not moved.verified
    # So does a new kind: pools and calls may admit by kind.
    with sessions() as session, session.begin():
        tenancy.verify_organisation(session, actor=admin, name="rug", verified=True, now=clock())
        changed = tenancy.update_organisation(
            session, actor=alice, name="rug", kind=OrgKind.HEALTH, now=clock()
        )
    assert changed.kind == OrgKind.HEALTH and not changed.verified
    assert [d.get("region") for d in _audit(sessions, "organisation.update")] == ["NL12", None]
    assert len(_audit(sessions, "organisation.verify")) == 2


@pytest.mark.parametrize(
    ("country", "region", "error"),
    [
        ("NLD", None, "two letters"),
        ("NL", "DE11", "not in country NL"),
        (None, "NL11", "needs a country"),
        ("NL", "NL1111", "NUTS code"),
        ("GR", "GR30", "not in country GR"),  # Greece is EL in NUTS
    ],
)
def test_bad_location_is_refused_and_nothing_is_written(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    country: str | None,
    region: str | None,
    error: str,
) -> None:
    alice = make_user(sessions, "alice", clock())
    with pytest.raises(InvalidRequest, match=error):
        _org(sessions, alice, clock, country=country or "", region=region or "")  # type: ignore[arg-type]
    with sessions() as session:
        assert "rug" not in {o.name for o in tenancy.list_organisations(session, actor=alice)}
    assert _audit(sessions, "organisation.create") == []


def test_greek_region_codes_use_el(sessions: sessionmaker[Session], clock: FrozenClock) -> None:
    alice = make_user(sessions, "alice", clock())
    _org(sessions, alice, clock, name="uoa", country="GR", region="EL30")


@pytest.mark.parametrize(
    ("name", "ok"), [("rug", True), ("umcg-2", True), ("RUG", False), ("a", False), ("x y", False)]
)
def test_organisation_names_are_handles(
    sessions: sessionmaker[Session], clock: FrozenClock, name: str, ok: bool
) -> None:
    alice = make_user(sessions, "alice", clock())
    if ok:
        _org(sessions, alice, clock, name=name)
    else:
        with pytest.raises(InvalidRequest, match="invalid organisation name"):
            _org(sessions, alice, clock, name=name)


def test_duplicate_organisation_is_a_conflict(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    alice = make_user(sessions, "alice", clock())
    _org(sessions, alice, clock)
    with pytest.raises(Conflict, match="exists already"):
        _org(sessions, alice, clock)


def test_roles_grant_what_they_may_and_the_last_owner_stays(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    bob = make_user(sessions, "bob", clock())
    make_user(sessions, "carol", clock())
    _org(sessions, alice, clock)
    with sessions() as session, session.begin():
        tenancy.set_org_member(
            session, actor=alice, name="rug", user="bob", role=OrgRole.MANAGER, now=clock()
        )
    with sessions() as session, session.begin():
        # A manager adds plain members, never owners or managers.
        tenancy.set_org_member(
            session, actor=bob, name="rug", user="carol", role=OrgRole.MEMBER, now=clock()
        )
        with pytest.raises(Forbidden, match="may not grant the role owner"):
            tenancy.set_org_member(
                session, actor=bob, name="rug", user="carol", role=OrgRole.OWNER, now=clock()
            )
        with pytest.raises(Forbidden, match="may not remove 'alice'"):
            tenancy.remove_org_member(session, actor=bob, name="rug", user="alice", now=clock())
    with sessions() as session, session.begin(), pytest.raises(Conflict, match="last owner"):
        tenancy.remove_org_member(session, actor=alice, name="rug", user="alice", now=clock())
    with sessions() as session, session.begin(), pytest.raises(Conflict, match="last owner"):
        tenancy.set_org_member(
            session, actor=alice, name="rug", user="alice", role=OrgRole.MEMBER, now=clock()
        )
    with sessions() as session:
        members = {m.user: m.role for m in tenancy.list_org_members(session, actor=bob, name="rug")}
    assert members == {"alice": "owner", "bob": "manager", "carol": "member"}
    assert [
        (d["user"], d["role"], d["previous"]) for d in _audit(sessions, "organisation.member.set")
    ] == [("bob", "manager", None), ("carol", "member", None)]
    with sessions() as session, session.begin():
        tenancy.set_org_member(
            session, actor=alice, name="rug", user="carol", role=OrgRole.MANAGER, now=clock()
        )
    assert _audit(sessions, "organisation.member.set")[-1]["previous"] == "member"


def test_projects_belong_to_an_organisation_and_membership_follows_it(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    carol = make_user(sessions, "carol", clock())
    dave = make_user(sessions, "dave", clock())  # of another organisation
    _org(sessions, alice, clock)
    with sessions() as session, session.begin():
        tenancy.set_org_member(
            session, actor=alice, name="rug", user="carol", role=OrgRole.MEMBER, now=clock()
        )
        project = tenancy.create_project(
            session, actor=alice, name="vision", organisation="rug", now=clock()
        )
        assert project.my_role == ProjectRole.MANAGER
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden, match="only owners and managers"):
            tenancy.create_project(
                session, actor=carol, name="mine", organisation="rug", now=clock()
            )
        with pytest.raises(NotFound):  # carol is in rug but not in the project
            tenancy.get_project(session, actor=carol, name="vision")
        with pytest.raises(Conflict, match="not a member of organisation 'rug'"):
            tenancy.set_project_member(
                session,
                actor=alice,
                name="vision",
                user="dave",
                role=ProjectRole.MEMBER,
                now=clock(),
            )
        tenancy.set_project_member(
            session, actor=alice, name="vision", user="carol", role=ProjectRole.MEMBER, now=clock()
        )
    job = make_job(sessions, carol, clock(), project="vision")
    with sessions() as session:
        assert [p.name for p in tenancy.list_projects(session, actor=carol)] == ["vision"]
        assert "rug" not in {p.organisation for p in tenancy.list_projects(session, actor=dave)}
        # The organisation's owner sees the project's jobs without being a member of it.
        assert get_job(session, actor=alice, job_id=job.id).id == job.id
        with pytest.raises(NotFound):
            get_job(session, actor=dave, job_id=job.id)
    # Leaving the organisation means leaving its projects.
    with sessions() as session, session.begin():
        tenancy.remove_org_member(session, actor=alice, name="rug", user="carol", now=clock())
    with sessions() as session:
        assert session.scalars(select(ProjectMemberRow.user_id)).all().count(carol.user_id) == 0
        assert list_jobs(session, actor=carol) == []


def test_operators_create_users_with_a_first_token(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden, match="only operators"):
            users.create_user(session, actor=alice, name="eve", now=clock())
        user, token = users.create_user(
            session, actor=admin, name="erik", is_reviewer=True, token_days=7, now=clock()
        )
        assert user.is_reviewer and not user.is_operator
        with pytest.raises(Conflict, match="exists already"):
            users.create_user(session, actor=admin, name="erik", now=clock())
        with pytest.raises(InvalidRequest, match="invalid user name"):
            users.create_user(session, actor=admin, name="bad name", now=clock())
    with sessions() as session:
        actor = authenticate(session, token=token, now=clock())
        assert actor.name == "erik" and actor.is_reviewer
    clock.advance(timedelta(days=8).total_seconds())
    with sessions() as session, pytest.raises(Unauthenticated, match="expired"):
        authenticate(session, token=token, now=clock())


def test_the_last_operator_keeps_the_role(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        with pytest.raises(Conflict, match="last operator"):
            users.set_user_roles(session, actor=admin, name="admin", is_operator=False, now=clock())
        users.create_user(session, actor=admin, name="op2", is_operator=True, now=clock())
        users.set_user_roles(session, actor=admin, name="admin", is_operator=False, now=clock())
    assert _audit(sessions, "user.roles") == [{"name": "admin", "is_operator": False}]


def test_tokens_are_personal_and_revoking_ends_them(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    bob = make_user(sessions, "bob", clock())
    with sessions() as session, session.begin():
        token, secret = users.new_token(session, actor=alice, name="laptop", days=30, now=clock())
        with pytest.raises(InvalidRequest, match="1 to 366 days"):
            users.new_token(session, actor=alice, name="forever", days=1000, now=clock())
    assert token.expires_at == clock() + timedelta(days=30)
    with sessions() as session, session.begin():
        assert [t.name for t in users.list_tokens(session, actor=alice)] == ["laptop"]
        with pytest.raises(Forbidden):
            users.list_tokens(session, actor=bob, user="alice")
        assert [t.name for t in users.list_tokens(session, actor=admin, user="alice")] == ["laptop"]
        with pytest.raises(NotFound):  # bob cannot tell whether token 1 exists
            users.revoke_token(session, actor=bob, token_id=token.id, now=clock())
        revoked = users.revoke_token(session, actor=alice, token_id=token.id, now=clock())
        assert revoked.revoked_at == clock()
        again = users.revoke_token(session, actor=alice, token_id=token.id, now=clock())
        assert again.revoked_at == clock()
    with sessions() as session, pytest.raises(Unauthenticated, match="revoked"):
        authenticate(session, token=secret, now=clock())
    assert len(_audit(sessions, "token.revoke")) == 1
