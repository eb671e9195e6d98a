"""Where the CLI and SDK find the server and your defaults: flags, then FABRIEK_URL /
FABRIEK_TOKEN / FABRIEK_PROJECT, then the config file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabriek.core.errors import InvalidRequest

# What `fabriek config set` may change; url and token are written by `fabriek login` and `up`.
SETTABLE = {"project": "the project your jobs run in when you name none"}


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
    project: str | None = None  # None: the server picks (your only project, or `default`)


def _stored() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"cannot read the client config {path} ({exc}); run `fabriek login` again"
        ) from None
    if not isinstance(stored, dict):
        raise InvalidRequest(f"the client config {path} is not a JSON object; run `fabriek login`")
    return stored


def load_config(url: str | None = None, token: str | None = None) -> ClientConfig:
    stored = _stored()
    return ClientConfig(
        url=url or os.environ.get("FABRIEK_URL") or stored.get("url"),
        token=token or os.environ.get("FABRIEK_TOKEN") or stored.get("token"),
        project=os.environ.get("FABRIEK_PROJECT") or stored.get("project"),
    )


def _write(values: dict[str, Any]) -> Path:
    """Write the client config, readable by its owner only (it holds a token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f, indent=2)
    os.replace(tmp, path)
    return path


def save_config(url: str, token: str) -> Path:
    """Remember the server and token; the other settings stay as they were, unless they were
    another server's: a default project names a project of the server it was set for."""
    stored = _stored()
    if stored.get("url") not in (None, url):
        stored.pop("project", None)
    return _write({**stored, "url": url, "token": token})


def check_key(key: str) -> None:
    if key not in SETTABLE:
        raise InvalidRequest(
            f"no setting {key!r}; settable: {', '.join(SETTABLE)} "
            "(the server and token are set by `fabriek login`)"
        )


def set_config_value(key: str, value: str | None) -> Path:
    """Set one of SETTABLE (None: unset it)."""
    check_key(key)
    values = _stored()
    if value is None:
        values.pop(key, None)
    else:
        values[key] = value
    return _write(values)
