"""Progress of long loops as plain lines: one every ``every_s`` seconds on stderr, with the rate
and the time left. No carriage returns, so a CI log or ``dvc repro`` piped to a file stays one
readable line per update."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts done items of ``what``; prints ``what: done/total unit, rate/s, ETA`` at most every
    ``every_s`` seconds, and a last line on ``close`` when the loop took longer than that.

    Args:
        what: what is being done, e.g. ``"prepare@spam: OCR"``.
        total: how many items, or ``None`` when unknown (no ETA then).
        unit: the items' name, e.g. ``"images"``.
        every_s: seconds between lines.
        stream: where to print (default: stderr).
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "items",
        every_s: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        line = f"{self.what}: {self.done}{of} {self.unit}, {rate:.1f}/s"
        if final:
            line += f", done in {_duration(elapsed)}"
        elif self.total is not None and rate > 0:
            line += f", {_duration((self.total - self.done) / rate)} left"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        now = time.monotonic()
        if now - self.start >= self.every_s:
            self._print(now, final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def progress(
    items: Iterable[T],
    what: str,
    total: int | None = None,
    unit: str = "items",
    every_s: float = 10.0,
) -> Iterator[T]:
    """Yield ``items``, reporting as ``Progress`` does (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(what, total, unit, every_s) as bar:
        for item in items:
            yield item
            bar.update()
