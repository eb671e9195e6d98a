"""preemption and priority: jobs may be preemptible, run on borrowed capacity, be stopped and
requeued; a priority orders them within a project's fair share

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("borrowed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("preempt_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("estimated_start_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("priority")
        batch_op.drop_column("estimated_start_at")
        batch_op.drop_column("preempt_requested_at")
        batch_op.drop_column("preemptions")
        batch_op.drop_column("borrowed")
        batch_op.drop_column("preemptible")
