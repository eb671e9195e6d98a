"""allocations: projects' budgets of GPU-hours in pools, held by jobs and charged when they end

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("gpu_hours", sa.Float(), nullable=False),
        sa.Column("held_gpu_hours", sa.Float(), nullable=False),
        sa.Column("charged_gpu_hours", sa.Float(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_allocations_pool_id"), ["pool_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_allocations_project_id"), ["project_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allocation_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hold_gpu_hours", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("charged_gpu_hours", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_allocation_id"), ["allocation_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_jobs_allocation_id_allocations", "allocations", ["allocation_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_allocation_id_allocations", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_allocation_id"))
        batch_op.drop_column("charged_gpu_hours")
        batch_op.drop_column("hold_gpu_hours")
        batch_op.drop_column("allocation_id")
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_allocations_project_id"))
        batch_op.drop_index(batch_op.f("ix_allocations_pool_id"))
    op.drop_table("allocations")
