"""What `fabriek apply`, `application ...` and `review` say about an application's state."""

from __future__ import annotations

import json
import re

from tests.helpers import ServerProcess


def test_an_approval_is_said_once_with_its_allocation(server: ServerProcess) -> None:
    for args in (
        ("org", "create", "say-org", "--display-name", "Say", "--kind", "sme"),
        ("project", "create", "say-proj", "--org", "say-org"),
        ("call", "create", "say-play", "--title", "Playground", "--pool", "commercial",
         "--mode", "playground", "--opens", "2020-01-01T00:00Z", "--closes", "2100-01-01T00:00Z",
         "--total-gpu-hours", "100", "--max-gpu-hours", "10"),
    ):  # fmt: skip
        r = server.cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    r = server.cli("apply", "say-play", "--project", "say-proj", "--gpu-hours", "5", "--title", "t")
    assert r.returncode == 0, r.stderr
    # Playground applications are approved at once; the decision's text began with "approved".
    assert re.fullmatch(
        r"application (\d+) is approved: allocation (\d+) of 5 GPU-hours\n", r.stdout
    ), r.stdout
    drafted = server.cli(
        "apply", "say-play", "--project", "say-proj", "--gpu-hours", "1", "--title", "d",
        "--draft", "--json",
    )  # fmt: skip
    draft = json.loads(drafted.stdout)["id"]
    r = server.cli("application", "withdraw", str(draft))
    assert r.returncode == 0 and r.stdout == f"application {draft} is withdrawn\n", r.stdout
