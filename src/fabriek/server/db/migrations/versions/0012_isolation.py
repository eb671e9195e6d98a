"""isolation: each project's POSIX uid, an operator's network lock, each job's network

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("uid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("network_limit", sa.String(length=16), nullable=True))
        batch.create_unique_constraint("uq_projects_uid", ["uid"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("network", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("network")
    with op.batch_alter_table("projects") as batch:
        batch.drop_constraint("uq_projects_uid", type_="unique")
        batch.drop_column("network_limit")
        batch.drop_column("uid")
