"""The `fabriek` command group: the everyday commands first in `--help`, and Click's usage errors
said as fabriek says its own (one line `error: ...` on stderr, with the exit code of fabriek's
invalid requests), instead of Click's usage block."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from fabriek.cli.output import fail
from fabriek.core.errors import FabriekError, InvalidRequest

# Typer 0.2x carries its own copy of Click; its exceptions are where typer.BadParameter is.
_errors = sys.modules[typer.BadParameter.__module__]
UsageError: type[Exception] = _errors.UsageError
ClickException: type[Exception] = _errors.ClickException


class _NeverRaised(Exception):
    """Before Click 8.2 a group called without a command printed its help and exited itself."""


NoArgsIsHelpError: type[Exception] = getattr(_errors, "NoArgsIsHelpError", _NeverRaised)

# What a user types most, in the order of a job's life; the rest follow as registered.
EVERYDAY = ("up", "submit", "jobs", "status", "logs", "cancel", "download", "whoami", "partitions")


class FabriekGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        names = super().list_commands(ctx)
        first = [n for n in EVERYDAY if n in names]
        return first + [n for n in names if n not in first]

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        """Ctrl-C in a command that does not say more itself: one line and status 130 (Typer
        turns it into a silent exit with 130, found in review)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _exit("interrupted", 130)

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(args, *rest, **kwargs)
        except NoArgsIsHelpError as exc:
            exc.show()  # type: ignore[attr-defined]  # `fabriek token` alone: its help, as before
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except UsageError as exc:
            _exit(_usage_line(exc), InvalidRequest.exit_code)
        except ClickException as exc:
            _exit(exc.format_message(), exc.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            _exit("aborted", 1)
        except FabriekError as exc:  # one a command did not turn into its line itself
            _exit(exc.message, exc.exit_code)
        # Without standalone mode Click returns the exit code of a typer.Exit, or the command's
        # own return value (None: success).
        sys.exit(code if isinstance(code, int) else 0)


def _exit(message: str, code: int) -> NoReturn:
    """`fail`'s line and exit code, here where no Click context is left to catch its Exit."""
    try:
        fail(message, code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


PLAINER = {
    "Value error, ": "",
    "Input should be a valid integer, unable to parse string as an integer": "not a whole number",
    "Input should be a valid number, unable to parse string as a number": "not a number",
}


def _usage_line(exc: Exception) -> str:
    """One line, whatever Click wrote (a choice's list comes on lines of its own)."""
    message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    for wording, plain in PLAINER.items():  # the validator's words, as a user would say them
        message = message.replace(wording, plain)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "fabriek"
    return f"{message}; see `{command} --help`"
