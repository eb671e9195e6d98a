"""Replays side by side: each in its own process, their progress sent back as they go.

Replays are independent and CPU-bound (a whole Philly replay takes minutes), so a plan's sizes,
a comparison's policies and a benchmark's studies run one per core. Processes are spawned, not
forked: a fork copies a parent's threads' locks mid-use.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.managers import SyncManager
from queue import Empty
from typing import Any

Send = Callable[[Any], None]


def workers_for(workers: int | None, tasks: int) -> int:
    """How many processes for `tasks` replays: `workers`, or one per core (None), at most one a
    task."""
    return max(1, min(workers or len(os.sched_getaffinity(0)), tasks))


def side_by_side(
    work: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    workers: int,
    on_message: Callable[[Any], None] | None = None,
) -> list[Any]:
    """`work(*task, send)` for every task, `workers` at once, each in a spawned process; what a
    worker passes to `send` reaches `on_message` here as the work goes (`send` is None without
    it). `work` must be a module-level function. The results come in the tasks' order; the
    tasks start in it too (put the longest first).

    Ctrl-C reaches this process alone (the workers ignore it), which raises KeyboardInterrupt
    and stops every worker on its way out: no worker prints its own traceback or lives on."""
    context = multiprocessing.get_context("spawn")
    manager = SyncManager(ctx=context)
    with _children_ignore_interrupts():
        manager.start(_ignore_interrupts)
    try:
        with _children_ignore_interrupts():
            pool = context.Pool(workers, initializer=_ignore_interrupts)
        with pool:  # exit: terminate
            queue = manager.Queue() if on_message is not None else None
            running = [pool.apply_async(_call, (work, task, queue)) for task in tasks]
            while unfinished := [result for result in running if not result.ready()]:
                unfinished[0].wait(0.2)
                _drain(queue, on_message)
            _drain(queue, on_message)
            return [result.get() for result in running]
    finally:
        manager.shutdown()


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _children_ignore_interrupts() -> Iterator[None]:
    """Processes started in this block never see a Ctrl-C: SIGINT is blocked here while they
    start, they inherit the blocked mask across exec (as Python's own resource tracker is
    started), and `_ignore_interrupts` then drops what came meanwhile. Without it a Ctrl-C while
    a worker was still importing (its first second) printed that worker's KeyboardInterrupt
    traceback. A Ctrl-C during the block reaches this process as it ends."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _call(work: Callable[..., Any], task: tuple[Any, ...], queue: Any) -> Any:
    return work(*task, queue.put if queue is not None else None)


def _drain(queue: Any, on_message: Callable[[Any], None] | None) -> None:
    if queue is None or on_message is None:
        return
    while True:
        try:
            message = queue.get_nowait()
        except Empty:
            return
        on_message(message)
