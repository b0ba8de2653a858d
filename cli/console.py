"""Where the CLI writes: results to stdout, notes, progress and errors to stderr.

Every piece of user text (a path, a layer or tensor name, a note that quotes one) goes through
`escape` or `markup=False`: Rich would otherwise read `[/red]` in a tensor name as markup.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Stdout(Console):
    """Results' console. Rich's default on a broken pipe goes quiet for good, keeps the unwritten
    buffer and exits 1; here the buffer is dropped and the error raised, so that `main.run` exits 141
    and the next run in the same process (a test, a notebook) prints normally."""

    def on_broken_pipe(self) -> None:
        del self._buffer[:]
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")


stdout = _Stdout(highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)


class _Flags:
    quiet = False  # --quiet: no notes or progress on stderr (errors still print)
    debug = False  # --debug: a line per stage on stderr


flags = _Flags()


def configure(quiet: bool = False, debug: bool = False) -> None:
    """Set for one run by the app's callback (and reset at the start of every run)."""
    flags.quiet, flags.debug = quiet, debug
    stderr.quiet = quiet


def note(text: str, style: str = "yellow", prefix: str = "note: ") -> None:
    """One note on stderr, `text` shown as written."""
    stderr.print(f"[{style}]{escape(prefix + text)}[/{style}]" if style else escape(prefix + text))


def dim(text: str) -> None:
    stderr.print(f"[dim]{escape(text)}[/dim]")


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


@contextmanager
def stage_progress(hidden: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A `progress(stage, advance, total)` callback drawing one bar per stage on a terminal (none with
    --json or --quiet); with --debug, also a line when each stage starts."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=stderr,
        disable=hidden or flags.quiet or not stderr.is_terminal,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def progress(stage: str, advance: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(escape(stage), total=total)
            if flags.debug:
                stderr.print(f"debug: {escape(stage)} started ({total})", markup=True)
        bars.update(tasks[stage], advance=advance, total=total)

    with bars:
        yield progress


def estimate(rows: int, seconds: float, peak: int, budget: int, fits: bool) -> None:
    """Before a long run: how long and how much memory it will take, and the way to trade resolution for time."""
    minutes = seconds / 60
    text = (
        f"estimate: {rows} rows, about {minutes:.0f} min, peak memory about {peak / 2**30:.1f} GiB of a "
        f"{budget / 2**30:.1f} GiB budget"
    )
    if not fits:
        text += "; even one sample per batch exceeds the budget (raise --max-memory or use a smaller input)"
    if minutes > 10:
        text += "; --grid 16 (σ on a coarser lattice) or fewer --steps trade resolution for time"
    note(text, style="cyan", prefix="")
