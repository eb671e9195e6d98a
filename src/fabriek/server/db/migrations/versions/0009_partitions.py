"""partitions: jobs ask for a number of nodes and, optionally, a partition; the engine's
placement (the partition's nodes it counted the job on) is kept while the job runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("nodes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("partition", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("placement", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("placement")
        batch.drop_column("partition")
        batch.drop_column("nodes")
