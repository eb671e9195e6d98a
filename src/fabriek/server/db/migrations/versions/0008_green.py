"""green: the facility model, grid carbon series and forecasts, facility meter readings, and
each job's footprint and flexibility

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "facility_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pue", sa.Float(), nullable=False),
        sa.Column("wue_onsite", sa.Float(), nullable=False),
        sa.Column("water_offsite", sa.Float(), nullable=False),
        sa.Column("carbon_column", sa.String(length=16), nullable=False),
        sa.Column("zone", sa.String(length=16), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "facility_pue",
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pue", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("starts_at"),
    )
    for name in ("grid_intensity", "grid_forecast"):
        op.create_table(
            name,
            sa.Column("zone", sa.String(length=16), nullable=False),
            sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
            sa.Column("direct", sa.Float(), nullable=True),
            sa.Column("life_cycle", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("zone", "hour"),
        )
    op.create_table(
        "facility_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_kwh", sa.Float(), nullable=False),
        sa.Column("it_kwh", sa.Float(), nullable=False),
        sa.Column("water_m3", sa.Float(), nullable=False),
        sa.Column("renewable_kwh", sa.Float(), nullable=False),
        sa.Column("reused_heat_kwh", sa.Float(), nullable=False),
        sa.Column("entered_by", sa.String(length=128), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("green_start_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("carbon_at_once_g", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("facility_kwh", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("water_l", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("carbon_kg", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("carbon_saved_kg", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("carbon_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in (
            "carbon_note",
            "carbon_saved_kg",
            "carbon_kg",
            "water_l",
            "facility_kwh",
            "carbon_at_once_g",
            "green_start_at",
            "deadline",
        ):
            batch_op.drop_column(column)
    for name in ("facility_readings", "grid_forecast", "grid_intensity", "facility_pue"):
        op.drop_table(name)
    op.drop_table("facility_settings")
