from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, start_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The API tests run against a real server on each database."""
    extra: dict[str, str] = {}
    name = None
    if request.param == "postgresql":
        admin = request.getfixturevalue("pg_server")
        name, url = create_pg_database(admin)
        extra["FABRIEK_DATABASE_URL"] = url
    proc = start_server(tmp_path_factory.mktemp(f"server-{request.param}") / "home", **extra)
    yield proc
    proc.stop()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_server"), name)
