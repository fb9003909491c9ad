"""Progress a user sees in a terminal and under DVC alike.

In a terminal: a rich progress bar. Without one (`dvc repro`, CI, a log file) rich draws nothing until the
end, so a long stage looked hung; there we print a plain line every `every_s` seconds instead, with the rate
and the time left:  `encode: 61,440/120,000 documents (51%), 12,288 documents/s, ETA 0:05`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

T = TypeVar("T")
EVERY_S = 10.0


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Heartbeat:
    """Counts work done and prints a line at most every `every_s` seconds (and once at the end)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        *,
        every_s: float = EVERY_S,
        stream: TextIO | None = None,
        clock=time.monotonic,
    ):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self.started = self.last = clock()
        self.extra = ""

    def advance(self, n: int = 1, extra: str | None = None) -> None:
        self.update(self.done + n, extra)

    def update(self, done: int, extra: str | None = None) -> None:
        self.done = done
        if extra is not None:
            self.extra = extra
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else self.clock()) - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [
            f"{self.label}: {self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
        ]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:,.0f} {self.unit}/s" if rate >= 10 else f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        else:
            parts.append(f"elapsed {_clock(elapsed)}")
        if self.extra:
            parts.append(self.extra)
        return ", ".join(parts)


class _Bar:
    """The same interface over a rich progress bar (terminal)."""

    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, extra: str | None = None) -> None:
        self.progress.advance(self.task, n)

    def update(self, done: int, extra: str | None = None) -> None:
        self.progress.update(self.task, completed=done)


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress(
    label: str, total: int | None, unit: str, *, every_s: float = EVERY_S
) -> Iterator[Heartbeat | _Bar]:
    """A bar in a terminal, heartbeat lines elsewhere; `.advance(n)` / `.update(done)` either way."""
    if is_terminal():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            yield _Bar(bar, bar.add_task(label, total=total))
        return
    yield Heartbeat(label, total, unit, every_s=every_s)


def counted(items: Iterable[T], meter) -> Iterator[T]:
    """Yield items, advancing `meter` by one for each."""
    for item in items:
        yield item
        meter.advance(1)
