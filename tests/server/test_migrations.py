"""Migrations bring SQLite and PostgreSQL to exactly the schema the models describe."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from fabriek.server.db.migrate import current_revision, head_revision, upgrade
from fabriek.server.db.models import Base


def test_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_upgrade_is_repeatable(engine: Engine) -> None:
    assert upgrade(engine) == head_revision()
