"""How the CLI speaks: errors as one sentence on stderr with the error's exit code, tables with Rich.

Whatever the server returns may hold text a tenant chose (names, reasons, file names, error
messages quoting them), and is read by others: every string printed through `console` or
`err_console` has its hidden characters written as escapes (core.text.visible), and every value
put into Rich markup goes through `shown` (markup escaped, newlines visible too). `--json`
prints JSON with everything beyond ASCII as \\u escapes."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fabriek.core.errors import FabriekError
from fabriek.core.text import visible
from fabriek.core.units import format_duration

if TYPE_CHECKING:
    from fabriek.client.client import Client

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RawOpt = Annotated[
    bool,
    typer.Option(
        "--raw",
        help="The job's output byte for byte, its colours and cursor moves included: only for "
        "output you trust. Without it, control characters are shown as escapes (ESC as \\x1b).",
    ),
]


def client() -> Client:
    """The SDK's client (FABRIEK_URL/FABRIEK_TOKEN or the client config), imported when a
    command needs it: httpx stays out of the CLI's start-up."""
    from fabriek.client.client import Client

    return Client()


WIDE = 1000  # columns into a file or a pipe: more than any table needs, so nothing is cut


def shown(text: str) -> str:
    """Untrusted text (a name, a reason, a file name) as one line of Rich markup that shows it
    literally: `[bold]` as itself, ESC as `\\x1b`, a newline as `\\n`."""
    return escape(visible(text))


def shown_lines(text: str) -> str:
    """`shown` for a text of several lines (a review's comment): newlines and tabs kept."""
    return escape(visible(text, lines=True))


class _Console(Console):
    """Rich's console, except that

    - into a file or a pipe it neither cuts nor wraps: there Rich assumes 80 columns and squeezes
      a table into them, cutting its figures (`CAP…`, `1,8…`) or folding a cell over lines, so
      `fabriek jobs > jobs.txt` lost what a script would read. An exported COLUMNS (pytest's
      subprocesses get 80) is ignored there too;
    - every string it prints (a table's cells too, measured as shown) has its hidden characters
      made visible, wherever it came from: a value that missed `shown` still cannot move the
      cursor, retitle the window or reorder a line (Rich passes ESC and U+202E through, and drops
      BEL, leaving an OSC sequence open);
    - `:name:` is not an emoji code: a job named `:skull:` is shown as typed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # visible() writes no '[' and ends no escape with a backslash: markup keeps its meaning.
        return super().render_str(visible(text, lines=True), **kwargs)

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


class JobOutput:
    """Where a job's output (`logs`, `submit --wait`) goes: its bytes decoded as UTF-8 (a byte
    that is not: `\\xff`), hidden characters written as escapes with lines kept (core.text.visible),
    and encoded again; with `raw`, the bytes unchanged. The output comes in chunks that may split
    a character or a CR LF: what could still be one is held back until the next or `close`."""

    def __init__(self, out: BinaryIO, *, raw: bool = False) -> None:
        self.out, self.raw = out, raw
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._cr = ""  # a CR that ended the last chunk: kept only if LF follows

    def write(self, data: bytes) -> None:
        if self.raw:
            self.out.write(data)
        else:
            text = self._cr + self._decoder.decode(data)
            self._cr = "\r" if text.endswith("\r") else ""
            self._put(text[: len(text) - len(self._cr)])
        self.out.flush()

    def close(self) -> None:
        if not self.raw:
            self._put(self._cr + self._decoder.decode(b"", final=True))
            self._cr = ""
        self.out.flush()

    def _put(self, text: str) -> None:
        if text:
            self.out.write(visible(text, lines=True).encode())


def print_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(data, Sequence):
        payload: Any = [d.model_dump(mode="json") for d in data]
    elif isinstance(data, BaseModel):
        payload = data.model_dump(mode="json")
    else:
        payload = data
    # ensure_ascii: a control, U+202E or U+200B in a name is written as a \u escape, not raw
    # (the JSON and what it decodes to are exactly the same either way).
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=True) + "\n")


def print_rows(*rows: tuple[str, str]) -> None:
    """A `show` command's answer: one labelled line each, the values shown literally."""
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(f"[bold]{label}[/]", shown(value))
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
