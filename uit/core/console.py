"""Terminal output shared by the CLI and the DVC stages: consoles and progress bars (rich only,
so a stage does not import the CLI and a CLI change does not re-run the pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

# The one progress protocol of the library's long operations: each takes a ``NewBar``, calls it
# with a description and a total, and advances what it returns. ``adder`` makes one from rich
# bars; any function of that shape (a test's recorder, a GUI) works as well.
Advance = Callable[[int], None]
NewBar = Callable[[str, int], Advance]

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bars() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=False) as progress:
        yield progress


@contextmanager
def bars() -> Iterator[NewBar]:
    """Progress bars on stderr, as a ``NewBar`` (what a stage hands the library)."""
    with progress_bars() as progress:
        yield adder(progress)


def adder(progress: Progress) -> NewBar:
    """``add(description, total)`` adds a bar to ``progress`` and returns its advance callback."""

    def add(description: str, total: int) -> Advance:
        task = progress.add_task(description, total=total)
        return lambda n: progress.advance(task, n)

    return add


class ProgressReporter:
    """Shows the fit loop as one bar per epoch with the running loss terms."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.means: dict[str, float] = {}
        self.count = 0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.task = self.progress.add_task(f"epoch {epoch + 1}", total=steps)
        self.means, self.count = {}, 0

    def step(self, losses: Any, lr: float) -> None:
        self.count += 1
        for name, value in losses.items():
            self.means[name] = (
                self.means.get(name, 0.0) + (value - self.means.get(name, 0.0)) / self.count
            )
        terms = " ".join(f"{k} {v:.3f}" for k, v in self.means.items())
        assert self.task is not None
        self.progress.update(self.task, advance=1, description=f"{terms} lr {lr:.1e}")

    def end_epoch(self, record: Any) -> None:
        scores = " ".join(f"{k} {record[k]:.2f}" for k in ("R1", "mAP") if k in record)
        console.print(f"epoch {int(record['epoch'])}: loss {record['loss']:.4f} {scores}")
