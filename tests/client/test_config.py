"""The client config: the server, the token and a personal default project."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabriek.client.config import load_config, save_config, set_config_value


def test_a_default_project_stays_with_its_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new token for the same server keeps the default project; a login to another server
    drops it, which names a project of the first (found in review)."""
    monkeypatch.setenv("FABRIEK_CONFIG", str(tmp_path / "config.json"))
    for name in ("FABRIEK_URL", "FABRIEK_TOKEN", "FABRIEK_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    save_config("http://a:8765", "fbk_one")
    set_config_value("project", "vision")
    save_config("http://a:8765", "fbk_two")
    assert (load_config().project, load_config().token) == ("vision", "fbk_two")
    save_config("http://b:8765", "fbk_three")
    assert (load_config().project, load_config().url) == (None, "http://b:8765")
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o600
