"""What every stage shares: friendly errors and progress bars on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from uit.errors import UitError

console = Console(stderr=True)


def run(main: Callable[[], None]) -> None:
    """Run a stage; a user error becomes a message and exit code 1, not a traceback."""
    try:
        main()
    except UitError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)


@contextmanager
def bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield ``bar(description, total)``, which adds a bar and returns its advance callback."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def bar(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n: progress.advance(task, n)

        yield bar
