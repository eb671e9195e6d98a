"""The `fabriek` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fabriek.cli import info
from fabriek.cli import jobs as job_commands
from fabriek.cli.audit import audit_app
from fabriek.cli.calls import application_app, call_app
from fabriek.cli.calls import apply as apply_to_call
from fabriek.cli.calls import review as review_application
from fabriek.cli.config import config_app
from fabriek.cli.facility import facility_app
from fabriek.cli.group import FabriekGroup
from fabriek.cli.output import console, err_console, fail, handled, shown
from fabriek.cli.plan import plan as plan_command
from fabriek.cli.pools import allocation_app, pool_app
from fabriek.cli.reports import report_app
from fabriek.cli.reports import usage as usage_report
from fabriek.cli.simulate import simulate as simulate_command
from fabriek.cli.tenancy import org_app, project_app, token_app, user_app
from fabriek.core.errors import FabriekError
from fabriek.core.units import format_bytes

app = typer.Typer(
    cls=FabriekGroup,  # everyday commands first in --help; usage errors as one line
    help="fabriek: run and follow jobs on an AI Factory.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (docs/cli.md)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as one plain line, like every other error
)
app.callback()(info.root)  # --version
app.command("whoami")(info.whoami)
app.command("partitions")(info.partitions)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org")
app.add_typer(project_app, name="project")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(pool_app, name="pool")
app.add_typer(allocation_app, name="allocation")
app.add_typer(call_app, name="call")
app.add_typer(application_app, name="application")
app.command("apply")(apply_to_call)
app.command("review")(review_application)
app.command("usage")(usage_report)
app.add_typer(report_app, name="report")
app.command("simulate")(simulate_command)
app.command("plan")(plan_command)
app.add_typer(facility_app, name="facility")
app.add_typer(audit_app, name="audit")


def _settings(  # type: ignore[no-untyped-def]
    home: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
):
    from pydantic import ValidationError

    from fabriek.settings import Settings

    overrides = {
        k: v
        for k, v in {"home": home, "host": host, "port": port, "workers": workers}.items()
        if v is not None
    }
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", 2)


# --- the server ---------------------------------------------------------------------------------
@app.command()
def up(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8765].")] = None,
    home: Annotated[
        Path | None,
        typer.Option(help="Data directory [default: FABRIEK_HOME or ~/.local/share/fabriek]."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes serving the API [default: FABRIEK_WORKERS or 1 per CPU, at most 4]."
        ),
    ] = None,
) -> None:
    """Run fabriek on this machine: API, controller and local backend (SQLite unless configured)."""
    from fabriek.client.config import save_config
    from fabriek.server.serve import serve

    settings = _settings(home, host, port, workers)

    def ready(runtime, token) -> None:  # type: ignore[no-untyped-def]
        url = f"http://{_client_host(settings.host)}:{settings.port}"
        err_console.print(
            f"fabriek {_version()} on [bold]{url}[/] - home {settings.home}, "
            f"database {runtime.engine.dialect.name}",
            highlight=False,
        )
        for name, cap in runtime.partitions().items():
            r = cap.resources
            err_console.print(
                f"  partition {shown(name)}: "
                + ("this machine, " if name == "local" else f"Slurm, {cap.nodes} nodes with ")
                + f"{r.cpus} CPUs, {format_bytes(r.memory_bytes)} memory, {r.gpus} GPUs"
                + (" each" if name != "local" else "")
                + f"; network {cap.network.default.value}"
                + (
                    f" (at most {cap.network.limit.value})"
                    if cap.network.limit != cap.network.default
                    else ""
                ),
                highlight=False,
            )
        isolation = runtime.backend.isolation
        if "local" in runtime.backends:
            mark = "" if isolation.complete else "[bold yellow]warning:[/] "
            err_console.print(f"  {mark}{escape(isolation.describe())}", highlight=False)
        if token:
            path = save_config(url, token)
            err_console.print(
                f"created the administrator and a token; the CLI on this machine uses it ({path})",
                highlight=False,
            )
        else:
            _follow_address_change(runtime, url)
        err_console.print(f"API docs at {url}/docs - stop with Ctrl-C (running jobs keep running)")

    with handled():
        serve(settings, on_ready=ready)


def _follow_address_change(runtime, url: str) -> None:  # type: ignore[no-untyped-def]
    """Started on another address: point this machine's CLI config there, if its token is ours."""
    from fabriek.client.config import load_config, save_config
    from fabriek.server.services.auth import authenticate

    config = load_config()
    if not config.token or config.url == url:
        return
    try:
        with runtime.reading() as session:
            authenticate(session, token=config.token, now=runtime.clock())
    except FabriekError:
        return  # the config belongs to another server: leave it alone
    save_config(url, config.token)
    err_console.print(f"the CLI config now points to {url}", highlight=False)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _version() -> str:
    from fabriek import __version__

    return __version__


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The server, e.g. https://fabriek.example.org")],
    token: Annotated[str, typer.Option(help="Your API token.", prompt=True, hide_input=True)],
) -> None:
    """Check a token against a server and remember both for later commands."""
    from fabriek.client.client import Client
    from fabriek.client.config import save_config

    with handled():
        me = Client(url, token).whoami()
        path = save_config(url, token)
    console.print(
        f"logged in to {shown(url)} as [bold]{shown(me.name)}[/]; saved in {shown(str(path))}"
    )


@db_app.command("upgrade")
def db_upgrade(home: Annotated[Path | None, typer.Option(help="Data directory.")] = None) -> None:
    """Apply the database migrations that are not applied yet (also done on every start)."""
    from fabriek.server.db.engine import make_engine
    from fabriek.server.db.migrate import upgrade

    settings = _settings(home)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    try:
        revision = upgrade(engine)
    finally:
        engine.dispose()
    console.print(f"database is at revision {revision}")


# --- the job commands (cli/jobs.py) -------------------------------------------------------------
app.command("submit", context_settings={"allow_interspersed_args": False})(job_commands.submit)
app.command("jobs")(job_commands.jobs)
app.command("status")(job_commands.status)
app.command("logs")(job_commands.logs)
app.command("cancel")(job_commands.cancel)
app.command("download")(job_commands.download)
app.add_typer(config_app, name="config")  # your defaults, e.g. the project (cli/config.py)
# --- end of the job commands ---------------------------------------------------------------------


def main() -> None:  # pragma: no cover - the console script
    try:
        app()
    except FabriekError as exc:
        fail(exc.message, exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
