"""How the CLI speaks: errors as one sentence on stderr with the error's exit code, tables with Rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table

from fabriek.core.errors import FabriekError
from fabriek.core.units import format_duration

if TYPE_CHECKING:
    from fabriek.client.client import Client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def client() -> Client:
    """The SDK's client (FABRIEK_URL/FABRIEK_TOKEN or the client config), imported when a
    command needs it: httpx stays out of the CLI's start-up."""
    from fabriek.client.client import Client

    return Client()


WIDE = 1000  # columns into a file or a pipe: more than any table needs, so nothing is cut


class _Console(Console):
    """Rich's console, except that into a file or a pipe it neither cuts nor wraps: there Rich
    assumes 80 columns and squeezes a table into them, cutting its figures (`CAP…`, `1,8…`) or
    folding a cell over lines, so `fabriek jobs > jobs.txt` lost what a script would read. An
    exported COLUMNS (pytest's subprocesses get 80) is ignored there too."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(WIDE, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = _Console()
err_console = _Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def handled() -> Iterator[None]:
    """Turn fabriek errors into one line on stderr and the error's exit code."""
    try:
        yield
    except FabriekError as exc:
        fail(exc.message, exc.exit_code)


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C during long local work (a replay, a plan): one line and exit status 130, no
    traceback; the command writes its files only after this block, so none is half-written."""
    try:
        yield
    except KeyboardInterrupt:
        fail("interrupted; nothing written", 130)


def print_json(data: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
    if isinstance(data, list):
        payload: Any = [d.model_dump(mode="json") for d in data]
    elif isinstance(data, BaseModel):
        payload = data.model_dump(mode="json")
    else:
        payload = data
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def print_rows(*rows: tuple[str, str]) -> None:
    """A `show` command's answer: one labelled line each, the values shown literally."""
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(f"[bold]{label}[/]", escape(value))
    console.print(grid)


def expiry_text(
    moment: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> str:
    """When something (a token) expires, and how long from now, or that it has."""
    if moment is None:
        return "never"
    when = f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    left = (moment - now()).total_seconds()
    return f"{when} (expired)" if left <= 0 else f"{when} (in {format_duration(left)})"


def age(moment: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((now() - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


STATE_STYLE = {
    "pending": "yellow",
    "admitted": "cyan",
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "timed_out": "red",
}


def utc_iso(text: str) -> str:
    """An ISO 8601 date or time as the API wants it: without a zone, it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{text!r} is not an ISO 8601 date or time, e.g. 2026-11-01 or 2026-11-01T08:00Z", 2)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
