"""Pools through the services, on both databases: the seeded default, shares, eligibility."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fabriek.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from fabriek.core.tenancy import Eligibility, OrgKind
from fabriek.server.db.models import AuditEventRow, PoolRow
from fabriek.server.services import pools, tenancy
from fabriek.server.services.actors import Actor
from tests.conftest import FrozenClock
from tests.server.factories import make_admin, make_user


def _org(
    sessions: sessionmaker[Session],
    owner: Actor,
    clock: FrozenClock,
    name: str,
    *,
    country: str | None,
    region: str | None,
    kind: str = "university",
) -> None:
    with sessions() as session, session.begin():
        tenancy.create_organisation(
            session,
            actor=owner,
            name=name,
            display_name=name,
            kind=OrgKind(kind),
            country=country,
            region=region,
            now=clock(),
        )


def test_the_seeded_default_mirrors_the_plan(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        found = {p.name: p for p in pools.list_pools(session)}
    assert {n: p.guarantee for n, p in found.items()} == {
        "commercial": 0.10,
        "eurohpc": 0.50,
        "national": 0.15,
        "regional": 0.25,
    }
    assert found["regional"].eligibility == Eligibility(
        verified=True, countries=("NL",), regions=("NL11", "NL12", "NL13")
    )
    assert found["commercial"].eligibility == Eligibility()


def test_shares_beyond_the_whole_machine_are_refused_and_nothing_is_written(
    sessions: sessionmaker[Session], clock: FrozenClock
) -> None:
    admin, _ = make_admin(sessions, clock())
    with sessions() as session, session.begin():
        with pytest.raises(InvalidRequest, match="would sum to 110%"):
            pools.create_pool(
                session, actor=admin, name="extra", display_name="Extra", guarantee=0.1, now=clock()
            )
        with pytest.raises(InvalidRequest, match="would sum to 105%"):
            pools.update_pool(session, actor=admin, name="national", guarantee=0.2, now=clock())
        with pytest.raises(InvalidRequest, match="fraction from 0 to 1"):
            pools.update_pool(session, actor=admin, name="national", lend_limit=1.5, now=clock())
        with pytest.raises(InvalidRequest, match="'unallocated' is reserved"):
            pools.create_pool(
                session, actor=admin, name="unallocated", display_name="x", guarantee=0, now=clock()
            )
    with sessions() as session:
        assert session.scalar(select(PoolRow.guarantee).where(PoolRow.name == "national")) == 0.15
        assert session.scalars(select(AuditEventRow.action)).all().count("pool.update") == 0
    # Make room first, then the new pool fits.
    with sessions() as session, session.begin():
        pools.update_pool(session, actor=admin, name="eurohpc", guarantee=0.4, now=clock())
        made = pools.create_pool(
            session,
            actor=admin,
            name="health",
            display_name="Health Data Valley",
            guarantee=0.1,
            borrow_limit=0.05,
            eligibility=Eligibility(verified=True, kinds=(OrgKind.HEALTH,)),
            now=clock(),
        )
        assert made.borrow_limit == 0.05
        with pytest.raises(Conflict, match="exists already"):
            pools.create_pool(
                session, actor=admin, name="health", display_name="x", guarantee=0, now=clock()
            )
    with sessions() as session:
        actions = session.scalars(select(AuditEventRow.action)).all()
        assert actions.count("pool.update") == 1 and actions.count("pool.create") == 1


def test_only_operators_change_pools(sessions: sessionmaker[Session], clock: FrozenClock) -> None:
    make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    with sessions() as session, session.begin():
        with pytest.raises(Forbidden, match="only operators"):
            pools.update_pool(session, actor=alice, name="regional", guarantee=0.3, now=clock())
        with pytest.raises(Forbidden, match="only operators"):
            pools.create_pool(
                session, actor=alice, name="mine", display_name="m", guarantee=0, now=clock()
            )
        with pytest.raises(NotFound):
            pools.get_pool(session, name="nowhere")


@pytest.mark.parametrize(
    ("country", "region", "verify", "kind", "eligible"),
    [
        ("NL", "NL11", True, "university", {"regional", "eurohpc", "national", "commercial"}),
        ("NL", "NL13", True, "sme", {"regional", "eurohpc", "national", "commercial"}),
        ("NL", "NL11", False, "university", {"commercial"}),  # not verified yet
        ("NL", "NL32", True, "government", {"eurohpc", "national", "commercial"}),  # Noord-Holland
        ("DE", "DE11", True, "research_institute", {"eurohpc", "commercial"}),
    ],
)
def test_eligibility_follows_verification_country_and_region(
    sessions: sessionmaker[Session],
    clock: FrozenClock,
    country: str,
    region: str,
    verify: bool,
    kind: str,
    eligible: set[str],
) -> None:
    admin, _ = make_admin(sessions, clock())
    alice = make_user(sessions, "alice", clock())
    _org(sessions, alice, clock, "acme", country=country, region=region, kind=kind)
    if verify:
        with sessions() as session, session.begin():
            tenancy.verify_organisation(
                session, actor=admin, name="acme", verified=True, now=clock()
            )
    with sessions() as session:
        answer = pools.pools_for_organisation(session, actor=alice, organisation="acme")
    assert {p.name for p, why in answer if why is None} == eligible
    reasons = {p.name: why for p, why in answer}
    if not verify:
        assert reasons["regional"] == "organisation acme is not verified by an operator"


def test_a_region_prefix_covers_its_subregions() -> None:
    rule = Eligibility(regions=("NL1",))
    from datetime import UTC, datetime

    from fabriek.core.tenancy import Organisation

    def org(region: str) -> Organisation:
        return Organisation(
            "o", "O", OrgKind.SME, "NL", region, None, None, datetime.now(UTC), None
        )

    assert rule.check(org("NL113")) is None
    assert rule.check(org("NL21")) == "organisation o is not in region NL1"
