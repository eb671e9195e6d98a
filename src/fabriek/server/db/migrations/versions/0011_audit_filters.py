"""audit filters: indexes for what operators look the audit trail up by (actor, target, time)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.create_index("ix_audit_events_actor", ["actor"], unique=False)
        batch.create_index("ix_audit_events_at", ["at"], unique=False)
        batch.create_index("ix_audit_events_target", ["target_type", "target_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_target")
        batch.drop_index("ix_audit_events_at")
        batch.drop_index("ix_audit_events_actor")
