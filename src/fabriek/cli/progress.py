"""Progress of long local work (a replay, a plan) on stderr, wherever stderr goes.

At a terminal: Rich's bars, redrawn in place and gone when the work is done. Into a file or a
pipe (a batch job's log, `2> progress.txt`, CI), where bars show nothing: one plain line every
few seconds (`FABRIEK_PROGRESS_SECONDS`, default 5), and one when each task is done, so a log
shows that the work moves and how far it is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fabriek.cli.output import err_console

DEFAULT_SECONDS = 5.0


@dataclass
class _Lines:
    """Plain lines: a task's count at most every `every` seconds, and when it is done."""

    every: float
    unit: str
    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    done: set[str] = field(default_factory=set)

    def update(self, name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if name in self.done or (not finished and now - self.last < self.every):
            return
        if finished:
            self.done.add(name)
        self.last = now
        share = f" ({100 * done // total}%)" if total else ""  # 100 % only when done
        of = f"/{total:,}" if total is not None else ""
        err_console.print(
            f"{name}: {done:,}{of} {self.unit}{share}, {now - self.started:.0f} s",
            highlight=False,
            soft_wrap=True,
        )


Update = Callable[[str, int, "int | None"], None]


@contextmanager
def progress(unit: str) -> Iterator[Update]:
    """`update(name, done, total)` for each task's progress in `unit`s (`jobs`); a task's total
    may be None while it is not known."""
    if err_console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn(unit), TimeElapsedColumn(), console=err_console,
                      transient=True) as bar:  # fmt: skip
            tasks: dict[str, int] = {}

            def redraw(name: str, done: int, total: int | None) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)  # type: ignore[arg-type]

            yield redraw
        return
    yield _Lines(every=_seconds(), unit=unit).update


def _seconds() -> float:
    text = os.environ.get("FABRIEK_PROGRESS_SECONDS", "")
    try:
        seconds = float(text) if text else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS
    return seconds if seconds >= 0 else DEFAULT_SECONDS
