"""Engine behaviour that the rest relies on: PostgreSQL connections checked after idling."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, exc, text

from fabriek.server.db import engine as engine_module
from fabriek.server.db.engine import make_engine


@pytest.mark.parametrize("idle_threshold", [0.0, 1e9], ids=["pinged", "not-pinged"])
def test_a_connection_killed_while_idle_is_replaced_when_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, idle_threshold: float
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", idle_threshold)
    engine = make_engine(pg_url)
    admin = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # e.g. a database restart while the pool idles
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        if idle_threshold == 0.0:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        else:  # the control: without the check the pooled connection fails once
            with pytest.raises(exc.OperationalError), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        admin.dispose()
