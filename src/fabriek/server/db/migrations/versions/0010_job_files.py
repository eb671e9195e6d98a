"""job files: what the retention policy did to a job's directories (working copies removed
when it ended, outputs and logs removed after the retention period), the disk its directories
hold and its project's total (the disk quota), and why the system stops a job

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tidied_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("files_removed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("disk_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("stop_reason", sa.Text(), nullable=True))
        batch.create_index("ix_jobs_tidied_at", ["tidied_at"])
        batch.create_index("ix_jobs_files_kept", ["files_removed_at", "finished_at"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("disk_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("disk_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_files_kept")
        batch.drop_index("ix_jobs_tidied_at")
        batch.drop_column("stop_reason")
        batch.drop_column("disk_bytes")
        batch.drop_column("files_removed_at")
        batch.drop_column("tidied_at")
