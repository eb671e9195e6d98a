"""Who a user is (whoami), one token at a time, and what a user whose token ended is told; through
the services, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Forbidden, NotFound, Unauthenticated
from fabriek.server.services import users
from fabriek.server.services.auth import authenticate
from tests.conftest import FrozenClock
from tests.server.factories import make_admin, make_user


def test_identity_names_roles_memberships_and_the_token_used(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock(), projects=("vision", "speech"), org="rug")
    make_user(sessions, "bob", clock(), projects=("other",))
    with sessions() as session, session.begin():
        _, secret = users.new_token(session, actor=alice, name="laptop", days=30, now=clock())
    with sessions() as session:
        me = users.identity(session, actor=alice, token=secret)
        assert (me.user.name, me.user.is_operator, me.user.is_reviewer) == ("alice", False, False)
        assert me.organisations == (("rug", "member"),)
        assert me.projects == (("speech", "rug", "member"), ("vision", "rug", "member"))
        assert me.token is not None and me.token.name == "laptop"
        assert me.token.expires_at == clock() + timedelta(days=30)
        # Another user's secret tells alice nothing about it.
        assert users.identity(session, actor=admin, token=secret).token is None
        assert users.identity(session, actor=alice).token is None


def test_one_token_is_seen_by_its_owner_and_operators_only(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    bob = make_user(sessions, "bob", clock())
    with sessions() as session, session.begin():
        token, _ = users.new_token(session, actor=alice, name="laptop", now=clock())
    with sessions() as session:
        assert users.get_token(session, actor=alice, token_id=token.id) == token
        assert users.get_token(session, actor=admin, token_id=token.id) == token
        with pytest.raises(NotFound, match=f"no token {token.id} of yours"):
            users.get_token(session, actor=bob, token_id=token.id)  # not "forbidden": absent
        with pytest.raises(NotFound):
            users.get_token(session, actor=alice, token_id=token.id + 100)


def test_an_operator_makes_a_token_for_a_user_whose_tokens_expired(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    make_user(sessions, "bob", clock())
    with sessions() as session, session.begin():
        _, old = users.new_token(session, actor=alice, name="laptop", days=1, now=clock())
    clock.advance(timedelta(days=2).total_seconds())
    with sessions() as session, pytest.raises(Unauthenticated) as ended:
        authenticate(session, token=old, now=clock())
    # It says when, and every way to a new token.
    message = ended.value.message
    assert "expired on 2026-11-26 12:00 UTC" in message
    assert "fabriek token create NAME" in message and "--user" in message
    assert "fabriek login URL --token NEW" in message
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden, match="only operators"):
            users.new_token(session, actor=alice, name="x", user="bob", now=clock())
        with pytest.raises(NotFound, match="no user named 'nobody'"):
            users.new_token(session, actor=admin, name="x", user="nobody", now=clock())
        made, new = users.new_token(
            session, actor=admin, name="replacement", days=7, user="alice", now=clock()
        )
    assert made.user == "alice"
    with sessions() as session:
        assert authenticate(session, token=new, now=clock()).name == "alice"


def test_a_revoked_token_says_how_to_get_another(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    with sessions() as session, session.begin():
        token, secret = users.new_token(session, actor=alice, name="laptop", now=clock())
        users.revoke_token(session, actor=alice, token_id=token.id, now=clock())
    with sessions() as session, pytest.raises(Unauthenticated, match="revoked; get a new one"):
        authenticate(session, token=secret, now=clock())
