"""Pools: shares of the factory's capacity. Everyone may read them; operators change them.

The guarantees of all pools together may not exceed the whole machine. Eligibility says which
organisations may get allocations in a pool (docs/operators.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from fabriek.core.errors import Conflict, Forbidden, NotFound
from fabriek.core.tenancy import (
    Eligibility,
    PoolInfo,
    check_display_name,
    check_fraction,
    check_pool_name,
    check_shares,
)
from fabriek.server.db.models import PoolRow
from fabriek.server.services import audit
from fabriek.server.services.actors import Actor
from fabriek.server.services.tenancy import get_organisation


def _to_pool(row: PoolRow) -> PoolInfo:
    return PoolInfo(
        name=row.name,
        display_name=row.display_name,
        guarantee=row.guarantee,
        borrow_limit=row.borrow_limit,
        lend_limit=row.lend_limit,
        eligibility=Eligibility.from_json(row.eligibility),
        created_at=row.created_at,
    )


def _pool(session: Session, name: str, *, for_update: bool = False) -> PoolRow:
    query = select(PoolRow).where(PoolRow.name == name)
    row = session.scalar(query.with_for_update() if for_update else query)
    if row is None:
        raise NotFound(f"no pool named {name!r}")
    return row


def list_pools(session: Session) -> list[PoolInfo]:
    return [_to_pool(r) for r in session.scalars(select(PoolRow).order_by(PoolRow.name))]


def get_pool(session: Session, *, name: str) -> PoolInfo:
    return _to_pool(_pool(session, name))


def _check_total(session: Session, name: str, guarantee: float) -> None:
    # Locked, so that two operators raising or creating two pools at once cannot together pass
    # 100 %: row locks would not see a pool being created, so PostgreSQL locks the table (SQLite
    # has one writer anyway).
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE pools IN SHARE ROW EXCLUSIVE MODE"))
    rows = session.scalars(select(PoolRow)).all()
    shares = {r.name: r.guarantee for r in rows}
    shares[name] = guarantee
    check_shares(shares)


def create_pool(
    session: Session,
    *,
    actor: Actor,
    name: str,
    display_name: str,
    guarantee: float,
    borrow_limit: float | None = None,
    lend_limit: float = 1.0,
    eligibility: Eligibility = Eligibility(),
    now: datetime,
) -> PoolInfo:
    if not actor.is_operator:
        raise Forbidden("only operators configure pools")
    check_pool_name(name)
    display_name = check_display_name(display_name)
    guarantee = check_fraction("guarantee", guarantee) or 0.0
    borrow_limit = check_fraction("borrow_limit", borrow_limit, optional=True)
    lend_limit = check_fraction("lend_limit", lend_limit) or 0.0
    if session.scalar(select(PoolRow.id).where(PoolRow.name == name)):
        raise Conflict(f"a pool named {name!r} exists already")
    _check_total(session, name, guarantee)
    row = PoolRow(
        name=name,
        display_name=display_name,
        guarantee=guarantee,
        borrow_limit=borrow_limit,
        lend_limit=lend_limit,
        eligibility=eligibility.to_json(),
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="pool.create",
        target_type="pool",
        target_id=row.id,
        at=now,
        name=name,
        guarantee=guarantee,
        borrow_limit=borrow_limit,
        lend_limit=lend_limit,
        eligibility=row.eligibility,
    )
    return _to_pool(row)


def update_pool(
    session: Session,
    *,
    actor: Actor,
    name: str,
    display_name: str | None = None,
    guarantee: float | None = None,
    borrow_limit: float | None = None,
    no_borrow_limit: bool = False,
    lend_limit: float | None = None,
    eligibility: Eligibility | None = None,
    now: datetime,
) -> PoolInfo:
    """Change what is given; `no_borrow_limit` lifts the borrow limit."""
    if not actor.is_operator:
        raise Forbidden("only operators configure pools")
    row = _pool(session, name, for_update=True)
    changes: dict[str, object] = {}
    if display_name is not None:
        changes["display_name"] = check_display_name(display_name)
    if guarantee is not None:
        changes["guarantee"] = check_fraction("guarantee", guarantee)
        _check_total(session, name, float(guarantee))
    if borrow_limit is not None:
        changes["borrow_limit"] = check_fraction("borrow_limit", borrow_limit)
    elif no_borrow_limit:
        changes["borrow_limit"] = None
    if lend_limit is not None:
        changes["lend_limit"] = check_fraction("lend_limit", lend_limit)
    if eligibility is not None:
        changes["eligibility"] = eligibility.to_json()
    changes = {k: v for k, v in changes.items() if getattr(row, k) != v}
    for key, value in changes.items():
        setattr(row, key, value)
    if changes:
        audit.record(
            session,
            actor=actor,
            action="pool.update",
            target_type="pool",
            target_id=row.id,
            at=now,
            name=name,
            **changes,
        )
    return _to_pool(row)


def pools_for_organisation(
    session: Session, *, actor: Actor, organisation: str
) -> list[tuple[PoolInfo, str | None]]:
    """Each pool with None if the organisation may get allocations in it, else why not."""
    org = get_organisation(session, actor=actor, name=organisation)
    return [(pool, pool.eligibility.check(org)) for pool in list_pools(session)]
