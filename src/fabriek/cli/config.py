"""`fabriek config`: your personal defaults in the client config (client/config.py)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from fabriek.cli.output import console, handled, print_rows, shown

config_app = typer.Typer(
    help="Your defaults for this machine's CLI and SDK (e.g. the project your jobs run in).",
    no_args_is_help=True,
)


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="What to set: project.")],
    value: Annotated[str, typer.Argument(help="Its value.")],
) -> None:
    """Set a default: `fabriek config set project vision` runs jobs given no --project there."""
    from fabriek.client.client import Client
    from fabriek.client.config import check_key, set_config_value
    from fabriek.core.errors import InvalidRequest

    with handled():
        check_key(key)  # before the server is asked
        mine = sorted(p.name for p in Client().projects())
        if value not in mine:
            raise InvalidRequest(
                f"you are not in a project named {value!r}; yours: {', '.join(mine) or 'none'}"
            )
        path = set_config_value(key, value)
    console.print(f"{key} = {shown(value)} (in {path})", highlight=False)


@config_app.command("unset")
def config_unset(key: Annotated[str, typer.Argument(help="What to unset: project.")]) -> None:
    """Forget a default."""
    from fabriek.client.config import set_config_value

    with handled():
        path = set_config_value(key, None)
    console.print(f"{key} unset (in {path})", highlight=False)


@config_app.command("show")
def config_show() -> None:
    """What the CLI and SDK use, and where each comes from."""
    from fabriek.client.config import config_path, load_config

    with handled():
        config = load_config()
    token = config.token
    print_rows(
        ("file", str(config_path())),
        ("server", config.url or "- (run `fabriek up` or `fabriek login`)"),
        ("token", f"{token[:8]}..." if token else "-"),
        (
            "project",
            config.project + (" (FABRIEK_PROJECT)" if os.environ.get("FABRIEK_PROJECT") else "")
            if config.project
            else "- (your only project, else 'default')",
        ),
    )
