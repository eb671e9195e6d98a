"""Migrations bring SQLite and PostgreSQL to exactly the schema the models describe."""

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from fabriek.server.db.engine import make_engine
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


def test_0002_moves_existing_projects_into_a_default_organisation(db_url: str) -> None:
    """A database of the foundation (0001) with a project, its owner and a member keeps both."""
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0001")
        now = datetime(2026, 11, 1, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, is_admin, created_at) VALUES "
                    "(1, 'root', :t, :now), (2, 'ann', :f, :now)"
                ),
                {"t": True, "f": False, "now": now},
            )
            conn.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES (1, 'default', :now)"),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO project_members (project_id, user_id, role) VALUES "
                    "(1, 1, 'owner'), (1, 2, 'member')"
                )
            )
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name, kind FROM organisations")).all() == [
                ("default", "other")
            ]
            org_members = conn.execute(
                text("SELECT user_id, role FROM organisation_members ORDER BY user_id")
            ).all()
            assert org_members == [(1, "owner"), (2, "member")]
            projects = conn.execute(text("SELECT organisation_id IS NOT NULL FROM projects")).all()
            assert projects == [(True,)]
            roles = conn.execute(
                text("SELECT user_id, role FROM project_members ORDER BY user_id")
            ).all()
            assert roles == [(1, "manager"), (2, "member")]
            users = conn.execute(
                text("SELECT name, is_operator, is_reviewer FROM users ORDER BY id")
            ).all()
            assert conn.execute(text("SELECT COUNT(*) FROM pools")).scalar() == 4
            assert [(n, bool(o), bool(r)) for n, o, r in users] == [
                ("root", True, False),
                ("ann", False, False),
            ]
    finally:
        engine.dispose()


def test_0010_leaves_jobs_that_ended_before_it_to_the_first_retention_round(db_url: str) -> None:
    """A job that ended before 0010 has its files neither tidied nor removed: the first round
    tidies it (its working copy was left behind) and its retention period runs from its end."""
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0009")
        now = datetime(2026, 11, 1, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO organisations (id, name, display_name, kind, created_at) "
                    "VALUES (1, 'o', 'O', 'university', :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO users (id, name, is_operator, is_reviewer, created_at) "
                    "VALUES (1, 'ann', :f, :f, :now)"
                ),
                {"f": False, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO projects (id, name, organisation_id, created_at) "
                    "VALUES (1, 'p', 1, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, name, project_id, user_id, state, argv, env, cpus, "
                    "memory_bytes, gpus, time_limit_s, backend, submitted_at, finished_at) "
                    "VALUES (1, 'j', 1, 1, 'succeeded', '[]', '{}', 1, 1, 0, 60, 'local', :now, "
                    ":now)"
                ),
                {"now": now},
            )
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            job = conn.execute(
                text("SELECT tidied_at, files_removed_at, disk_bytes, stop_reason FROM jobs")
            ).one()
            assert tuple(job) == (None, None, None, None)
            assert conn.execute(text("SELECT disk_bytes FROM projects")).scalar() is None
    finally:
        engine.dispose()
