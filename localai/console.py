"""Where output goes: data on stdout with plain writes, everything else on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import lru_cache

from localai.settings import settings


@lru_cache(maxsize=1)
def err_console():
    """The rich console for progress, logs and tables meant for a person (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    if settings.verbosity >= 0:
        err_console().print(message, markup=False)


def note(message: str) -> None:
    """A notice worth showing even when it is not asked for; hidden only by --quiet."""
    info(message)


def verbose(message: str) -> None:
    if settings.verbosity >= 1:
        err_console().print(message, markup=False, style="dim")


def warn(message: str) -> None:
    if settings.verbosity >= 0:
        err_console().print(f"warning: {message}", markup=False, style="yellow")


def out(text: str = "", end: str = "\n") -> None:
    """Data for stdout, written as-is (never through rich markup)."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def out_json(data) -> None:
    out(json.dumps(data, indent=2, default=str))


def progress(transient: bool = True):
    """A rich Progress bound to stderr; disabled under --quiet."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=transient,
        disable=settings.verbosity < 0,
    )


@contextmanager
def status_line(text: str):
    """A transient spinner line on stderr for a long step; yields update(text). Shown only on a
    terminal at the default verbosity (-v prints the detail as lines instead, scripts get nothing)."""
    console = err_console()
    if settings.verbosity != 0 or not console.is_terminal:
        yield lambda _text: None
        return
    with console.status(text) as status:
        yield lambda new_text: status.update(new_text)
