"""Where output goes: data on stdout with plain writes, everything else on stderr."""

from __future__ import annotations

import errno
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
    with closed_pipe_as_broken_pipe():
        sys.stdout.write(text + end)
        sys.stdout.flush()


def is_closed_pipe(exc: BaseException) -> bool:
    """Whether a failed write to stdout or a pipe means that its reader left (`| head`, `| more` quit):
    BrokenPipeError, or on Windows the EINVAL its C runtime reports there instead. Ask it only of such
    writes: Windows raises EINVAL for other failures too (a file name with a '?' in it)."""
    return isinstance(exc, BrokenPipeError) or (
        sys.platform == "win32" and isinstance(exc, OSError) and exc.errno == errno.EINVAL)


@contextmanager
def closed_pipe_as_broken_pipe():
    """Around a write to stdout or a pipe: a reader that left raises BrokenPipeError on Windows too,
    the one exception on which a command stops quietly; any other error passes."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) or not is_closed_pipe(exc):
            raise
        raise BrokenPipeError(errno.EPIPE, "the reader of the pipe left") from exc


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
