"""pools: shares of the factory, seeded with the default of the Groningen plan

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The seeds' factory: a quarter for verified organisations of the Northern Netherlands (NUTS NL11
# Groningen, NL12 Friesland, NL13 Drenthe), half for EuroHPC access, 15 % national, 10 %
# commercial. Operators change these.
DEFAULT_POOLS = (
    (
        "regional",
        "Regional: Northern Netherlands",
        0.25,
        {"verified": True, "countries": ["NL"], "regions": ["NL11", "NL12", "NL13"], "kinds": []},
    ),
    (
        "eurohpc",
        "EuroHPC access calls",
        0.50,
        {"verified": True, "countries": [], "regions": [], "kinds": []},
    ),
    (
        "national",
        "National (the Netherlands)",
        0.15,
        {"verified": True, "countries": ["NL"], "regions": [], "kinds": []},
    ),
    (
        "commercial",
        "Commercial use",
        0.10,
        {"verified": False, "countries": [], "regions": [], "kinds": []},
    ),
)


def upgrade() -> None:
    pools = op.create_table(
        "pools",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("guarantee", sa.Float(), nullable=False),
        sa.Column("borrow_limit", sa.Float(), nullable=True),
        sa.Column("lend_limit", sa.Float(), nullable=False),
        sa.Column("eligibility", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        pools,
        [
            {
                "name": name,
                "display_name": display,
                "guarantee": share,
                "borrow_limit": None,
                "lend_limit": 1.0,
                "eligibility": rules,
                "created_at": now,
            }
            for name, display, share, rules in DEFAULT_POOLS
        ],
    )


def downgrade() -> None:
    op.drop_table("pools")
