"""Where the CLI and SDK find the server: flags, then FABRIEK_URL / FABRIEK_TOKEN, then the config file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fabriek.core.errors import InvalidRequest


def config_path() -> Path:
    """FABRIEK_CONFIG, else $XDG_CONFIG_HOME/fabriek/config.json, else ~/.config/fabriek/config.json."""
    explicit = os.environ.get("FABRIEK_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fabriek" / "config.json"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    url: str | None
    token: str | None


def load_config(url: str | None = None, token: str | None = None) -> ClientConfig:
    stored: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"cannot read the client config {path} ({exc}); run `fabriek login` again"
            ) from None
    return ClientConfig(
        url=url or os.environ.get("FABRIEK_URL") or stored.get("url"),
        token=token or os.environ.get("FABRIEK_TOKEN") or stored.get("token"),
    )


def save_config(url: str, token: str) -> Path:
    """Write the client config, readable by its owner only (it holds a token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f, indent=2)
    os.replace(tmp, path)
    return path
