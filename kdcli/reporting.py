"""Human output on stderr (rich), kept apart from stdout, which carries only results."""

from __future__ import annotations

import contextlib
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


class Reporter:
    """Logs, progress bars and per-epoch lines on stderr; `quiet` silences all but warnings."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False)

    def print(self, renderable) -> None:
        if not self.quiet:
            self.console.print(renderable)

    def epoch(self, entry: dict, improved: bool) -> None:
        parts = [f"epoch {entry['epoch']:>3}", f"train {entry.get('train_loss', float('nan')):.4f}"]
        if "val_loss" in entry:
            parts.append(f"val {entry['val_loss']:.4f}")
        if "val_acc" in entry:
            parts.append(f"val acc {entry['val_acc']:.2f}%")
        if "val_mse" in entry:
            parts.append(f"val mse {entry['val_mse']:.4f}")
        parts.append(f"{entry.get('seconds', 0):.1f}s")
        self.info(" | ".join(parts) + ("  *" if improved else ""))

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar (hidden when quiet or not a terminal); yields advance(n)."""
        if self.quiet or not self.console.is_terminal:
            yield lambda _n: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
