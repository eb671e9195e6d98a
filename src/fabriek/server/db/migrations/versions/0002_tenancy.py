"""tenancy: organisations and their members, platform roles, projects in organisations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Projects that exist already (at least `default`) move into this organisation, with their members.
DEFAULT_ORGANISATION = "default"


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("is_admin", new_column_name="is_operator")
        batch_op.add_column(
            sa.Column("is_reviewer", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("is_reviewer", server_default=None)

    op.create_table(
        "organisations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("region", sa.String(length=5), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "organisation_members",
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["organisation_id"], ["organisations.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("organisation_id", "user_id"),
    )
    with op.batch_alter_table("organisation_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_organisation_members_user_id"), ["user_id"], unique=False
        )

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("organisation_id", sa.Integer(), nullable=True))
    _move_projects_into_default_organisation()
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.alter_column("organisation_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            "fk_projects_organisation_id_organisations",
            "organisations",
            ["organisation_id"],
            ["id"],
        )
        batch_op.create_index(batch_op.f("ix_projects_organisation_id"), ["organisation_id"])


def _move_projects_into_default_organisation() -> None:
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT COUNT(*) FROM projects")).scalar() == 0:
        return
    organisations = sa.table(
        "organisations",
        sa.column("name", sa.String()),
        sa.column("display_name", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    conn.execute(
        organisations.insert().values(
            name=DEFAULT_ORGANISATION,
            display_name="Default organisation",
            kind="other",
            created_at=datetime.now(UTC),
        )
    )
    org_id = conn.execute(
        sa.text("SELECT id FROM organisations WHERE name = :name"), {"name": DEFAULT_ORGANISATION}
    ).scalar_one()
    conn.execute(sa.text("UPDATE projects SET organisation_id = :org"), {"org": org_id})
    # Project owners (the only role 0001 wrote) become project managers and organisation owners;
    # everyone else in a project becomes a member of the organisation.
    conn.execute(sa.text("UPDATE project_members SET role = 'manager' WHERE role = 'owner'"))
    rows = conn.execute(sa.text("SELECT user_id, role FROM project_members")).all()
    roles: dict[int, str] = {}
    for user_id, role in rows:
        if role == "manager" or user_id not in roles:
            roles[user_id] = "owner" if role == "manager" else "member"
    for user_id, role in roles.items():
        conn.execute(
            sa.text(
                "INSERT INTO organisation_members (organisation_id, user_id, role) "
                "VALUES (:org, :user, :role)"
            ),
            {"org": org_id, "user": user_id, "role": role},
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_projects_organisation_id"))
        batch_op.drop_constraint("fk_projects_organisation_id_organisations", type_="foreignkey")
        batch_op.drop_column("organisation_id")
    op.execute("UPDATE project_members SET role = 'owner' WHERE role = 'manager'")
    with op.batch_alter_table("organisation_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_organisation_members_user_id"))
    op.drop_table("organisation_members")
    op.drop_table("organisations")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("is_reviewer")
        batch_op.alter_column("is_operator", new_column_name="is_admin")
