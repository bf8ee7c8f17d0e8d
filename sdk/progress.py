"""Progress bars and tables shared by the stages (rich)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int):
    """Yield an `advance(n)` callable that moves a bar of `total` units."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not sys.stderr.isatty() and not _force_progress(),
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _force_progress() -> bool:
    import os

    return os.environ.get("DISTILLERY_PROGRESS", "") == "1"


def log(message: str) -> None:
    console.print(message, soft_wrap=True)  # a log file gets whole lines, never a path cut in two


def quiet_libraries() -> None:
    """Keep our own progress bars and the trainer's; silence library load bars and chatter."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
