"""energy: what each job's GPUs, CPUs and memory used, and in which hours

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_energy_j", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cpu_energy_j", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("dram_energy_j", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("energy_methods", sa.JSON(), nullable=True))
    op.create_table(
        "job_energy_hours",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("joules", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("job_id", "hour"),
    )


def downgrade() -> None:
    op.drop_table("job_energy_hours")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("energy_methods")
        batch_op.drop_column("dram_energy_j")
        batch_op.drop_column("cpu_energy_j")
        batch_op.drop_column("gpu_energy_j")
