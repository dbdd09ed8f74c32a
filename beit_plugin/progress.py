"""Progress bars for the long loops of our tools, drawn only on a terminal.

:func:`track` wraps an iterable: on a terminal it draws a `rich
<https://rich.readthedocs.io>`_ progress bar (rich comes with MMEngine);
anywhere else (a pipe, a file, a log, pytest's capture) it is silent and
only yields the items. The bar goes to ``sys.stderr``, so a tool's results
on ``sys.stdout`` can be redirected without it (``tool > results.txt``
still shows the bar on the terminal, ``tool 2> log`` writes nothing there).
"""
import sys
from typing import IO, Iterable, Iterator, Optional, TypeVar

T = TypeVar('T')


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def track(iterable: Iterable[T],
          description: str = '',
          total: Optional[int] = None,
          file: Optional[IO[str]] = None) -> Iterator[T]:
    """Yield the items of ``iterable``, with a progress bar on a terminal.

    Args:
        iterable: the loop's items.
        description: text before the bar, e.g. ``'demo imagenet/train'``.
        total: number of items; ``len(iterable)`` when it has one (without
            either, the bar shows the count only).
        file: where the bar goes; ``sys.stderr`` (looked up at each call)
            when None. Nothing is written unless it is a terminal.
    """
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    with Progress(TextColumn('{task.description}'), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(),
                  console=Console(file=stream, force_terminal=True)) as bar:
        yield from bar.track(iterable, total=total, description=description)
