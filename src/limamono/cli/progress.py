"""Counting progress for long commands (eval, draft): a Rich bar in a terminal, lines in a log.

Rich draws nothing while its output is not a terminal (``nohup``, CI, a pipe), so a run
of ``limamono eval`` under ``nohup`` said nothing for the forty minutes it took. Outside a
terminal the same calls print a line such as ``generating (demo): 12/84, 3m05s`` at most
every :data:`LINE_EVERY_S` seconds, and always for the first and the last item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.text import Text

from limamono.cli.common import err
from limamono.cli.quiet import is_terminal

#: The least time between two progress lines of one task outside a terminal (training's
#: loss lines use the same interval: ``train.progress.LineProgress``).
LINE_EVERY_S = 30.0


class Counter(Protocol):
    """What a command calls: one task per counted thing, updated with its count."""

    def add_task(self, description: str, /, *, total: int) -> Any: ...

    def update(self, task: Any, /, *, completed: int) -> None: ...


class CountLines:
    """Progress as plain lines on stderr, throttled per task."""

    def __init__(self, say: Callable[[Text], None] | None = None,
                 clock: Callable[[], float] | None = None,
                 every_s: float | None = None) -> None:
        self._say = say or err.print
        self._clock = clock or time.monotonic
        self._every = LINE_EVERY_S if every_s is None else every_s
        self._tasks: list[dict[str, Any]] = []

    def add_task(self, description: str, /, *, total: int) -> int:
        now = self._clock()
        self._tasks.append({"description": description, "total": total, "done": 0,
                            "start": now, "said": None})
        return len(self._tasks) - 1

    def update(self, task: int, /, *, completed: int) -> None:
        state = self._tasks[task]
        if completed == state["done"]:
            return
        state["done"] = completed
        now = self._clock()
        last = state["said"]
        if last is None or completed >= state["total"] or now - last >= self._every:
            state["said"] = now
            # a Text: the description can hold a user's file name, never markup
            self._say(Text(f"{state['description']}: {completed}/{state['total']}, "
                           f"{_clock_text(now - state['start'])}"))


def _clock_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


@contextmanager
def counting(terminal: bool | None = None) -> Iterator[Counter]:
    """A Rich bar (description, bar, done/total, elapsed) on stderr in a terminal, else
    :class:`CountLines`."""
    if not (is_terminal() if terminal is None else terminal):
        yield CountLines()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
        yield bar
