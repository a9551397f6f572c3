"""Human output on stderr (rich), kept apart from stdout, which carries only results.

Long work shows its progress two ways: on a terminal, rich's bar (advancing per batch, with the
epoch as `epoch 7/30` and the time remaining); elsewhere (a log file, CI), plain lines: one per
epoch with an ETA, and one every `plain_every` seconds inside work that takes longer than that.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PIPE_WIDTH = 1000  # off a terminal (a log, a pipe) tables take the width they need, not 80 columns
PLAIN_EVERY = 10.0  # seconds between plain progress lines inside long work


def duration(seconds: float) -> str:
    """1:05 for 65 s, 1:02:05 past an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stderr_console() -> Console:
    """stderr as a rich console: a terminal's own width; elsewhere PIPE_WIDTH, so that a table keeps its
    rows and words whole instead of wrapping them mid-word at 80 columns."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(stderr=True, highlight=False, soft_wrap=True, width=PIPE_WIDTH)
    return console


class Reporter:
    """Logs, progress and per-epoch lines on stderr; `quiet` silences all but warnings."""

    def __init__(self, quiet: bool = False, console: Console | None = None, plain_every: float = PLAIN_EVERY):
        self.quiet = quiet
        self.console = console or stderr_console()
        self.plain_every = plain_every
        self._bar: tuple[Progress, int] | None = None  # the live rich bar and its task, on a terminal
        self._description: str | None = None  # what the running progress is of (e.g. "epoch 7/30")
        self._epoch_seconds: list[float] = []

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False)

    def print(self, renderable) -> None:
        if not self.quiet:
            self.console.print(renderable)

    def epoch(self, entry: dict, improved: bool, of: int | None = None) -> None:
        """One line per epoch: `epoch 7/30 | train ... | val ... | 1.2s | eta 0:35`.

        The ETA is the mean epoch time so far times the epochs left: an upper bound when early
        stopping ends the run sooner."""
        number = entry["epoch"]
        self._epoch_seconds.append(float(entry.get("seconds", 0)))
        width = len(str(of)) if of else 3
        parts = [f"epoch {number:>{width}}" + (f"/{of}" if of else ""),
                 f"train {entry.get('train_loss', float('nan')):.4f}"]
        if "val_loss" in entry:
            parts.append(f"val {entry['val_loss']:.4f}")
        if "val_acc" in entry:
            parts.append(f"val acc {entry['val_acc']:.2f}%")
        if "val_mse" in entry:
            parts.append(f"val mse {entry['val_mse']:.4f}")
        parts.append(f"{entry.get('seconds', 0):.1f}s")
        if of and number < of:
            parts.append(f"eta {duration(statistics.fmean(self._epoch_seconds) * (of - number))}")
        self.info(" | ".join(parts) + ("  *" if improved else ""))
        if self._description is not None and of and number < of:
            self._description = f"epoch {number + 1}/{of}"
            if self._bar is not None:
                bar, task = self._bar
                bar.update(task, description=self._description)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Progress of `total` steps; yields advance(n). A rich bar on a terminal; otherwise a plain
        line every `plain_every` seconds (none for work that ends sooner); nothing when quiet.
        `epoch()` moves the description on to the next epoch."""
        if self.quiet:
            yield lambda _n: None
            return
        self._description = description
        try:
            if not self.console.is_terminal:
                yield self._plain_advance(total)
                return
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=self.console, transient=True) as bar:
                task = bar.add_task(description, total=total)
                self._bar = (bar, task)
                yield lambda n: bar.advance(task, n)
        finally:
            self._bar, self._description = None, None

    def _plain_advance(self, total: int) -> Callable[[int], None]:
        started = last = time.monotonic()
        done = 0

        def advance(n: int) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if now - last < self.plain_every or not total:
                return
            last = now
            left = f", eta {duration((total - done) * (now - started) / done)}" if 0 < done < total else ""
            self.info(f"  {self._description}: {done}/{total} ({100 * done / total:.0f}%), "
                      f"{duration(now - started)} elapsed{left}")

        return advance
