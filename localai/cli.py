"""The `localai` command: global options, error handling, and the subcommand table.

Command modules import only typer and the standard library at the top, so
`localai --help` stays instant; torch and friends load inside each command.
"""

from __future__ import annotations

import _thread
import errno
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import typer

from localai import __version__
from localai.console import is_closed_pipe
from localai.errors import LocalaiError, UsageError
from localai.settings import env_flag, settings

# name -> module under localai.commands; each module defines `main`, whose
# docstring's first line is the one-line description in `localai --help`.
COMMANDS: dict[str, str] = {
    "download": "download",
    "list": "list_models",
    "rm": "rm",
    "where": "where",
    "doctor": "doctor",
    "generate": "generate",
    "chat": "chat",
    "bench": "bench",
    "speak": "speak",
    "quantize": "quantize",
    "eval": "eval",
}

app = typer.Typer(
    name="localai",
    help="Local AI on one consumer GPU: download, quantize, generate, speak, benchmark.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flush_stdout() -> None:
    """Send what stdout still holds before a last word on stderr. A reader that left already (`| head`)
    is no second failure: the rest goes to the null device, so the interpreter's last flush is quiet."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):  # stdout may be no file (a test runner's)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(message: str, code: int) -> None:
    _flush_stdout()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _describe_unexpected(exc: BaseException) -> Optional[str]:
    """One line for failures that are the user's to fix but arrive as library exceptions."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "out of memory. Use a smaller --batch-size, a shorter context, a 4-bit model, or --device cpu"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS)):
        return (f"cannot write {exc.filename or exc} ({exc.strerror or exc}). "
                f"Choose a writable folder ({_writable_setting(exc.filename)})")
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left on device" in str(exc).lower():
        # safetensors reports a full disk as its own error type, with the OS message inside
        where = _writable_setting(getattr(exc, "filename", None))
        return f"no space left on device. Free some disk space or point {where} elsewhere"
    return None


def _writable_setting(path) -> str:
    """The setting that moves the folder a write failed in: HF_HOME for the hub cache, else LOCALAI_HOME."""
    if path:
        from localai.store.hub import hub_cache_dir

        try:
            Path(path).resolve().relative_to(hub_cache_dir().resolve())
            return "HF_HOME"
        except ValueError:
            pass
    return "LOCALAI_HOME, -o"


def _interrupted():
    _flush_stdout()
    sys.stderr.write("\ninterrupted\n")
    raise typer.Exit(130)


def guarded(fn):
    """Turn exceptions into the CLI's contract: one line on stderr, exit 1 (2 for usage), 130 on Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C at a prompt (click turns it into Abort)
                _interrupted()
            raise
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _interrupted()
        except BrokenPipeError:
            # the reader went away (e.g. `| head`; Windows' EINVAL arrives as this too, see
            # console.closed_pipe_as_broken_pipe): stop quietly, and let the interpreter's last flush
            # of stdout go to the null device instead of ending in "Exception ignored ..."
            _silence_stdout()
            raise typer.Exit(0)
        except LocalaiError as exc:
            if settings.debug:
                import traceback

                traceback.print_exc()
            _fail(exc.one_line(), 2 if isinstance(exc, UsageError) else 1)
        except Exception as exc:
            if settings.debug:
                import traceback

                traceback.print_exc()
            line = _describe_unexpected(exc)
            if line is None:
                line = f"{type(exc).__name__}: {exc}".splitlines()[0] + " (run with --debug for the traceback)"
            _fail(line, 1)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from localai.console import out

        out(f"localai {__version__}")  # a reader that left raises BrokenPipeError here, on Windows too
        raise typer.Exit(0)


@app.callback()
def global_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail on stderr (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (or LOCALAI_DEBUG=1)."),
    offline: bool = typer.Option(False, "--offline", help="Use no network: no hub, no package index (sets HF_HUB_OFFLINE=1)."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu.", case_sensitive=False),
) -> None:
    """Local AI on one consumer GPU: download, quantize, generate, speak, benchmark."""
    device = device.lower()
    if device not in ("auto", "cuda", "cpu"):
        raise typer.BadParameter(f"{device!r} is not one of auto, cuda, cpu", param_hint="--device")
    settings.verbosity = -1 if quiet else verbose
    settings.debug = debug or env_flag("LOCALAI_DEBUG")
    settings.offline = offline
    settings.device = device
    if offline:
        # huggingface-hub reads this once, at import: set it before any command imports it
        os.environ["HF_HUB_OFFLINE"] = "1"
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    warnings.showwarning = _show_warning
    if settings.verbosity < 1:
        # bitsandbytes warns at every import that its optional CPU kernel, fetched from the hub
        # by the `kernels` package, is absent; its built-in kernel is used, nothing to fix
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (a library's, or the CPU kernel's fallback) as the tool's own: one line, hidden
    by --quiet; -v says where it was raised."""
    from localai.console import warn

    where = f" ({category.__name__}, {filename}:{lineno})" if settings.verbosity >= 1 else ""
    warn(f"{message}{where}")


def _register() -> None:
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"localai.commands.{module_name}")
        group = getattr(module, "app", None)
        if group is not None:  # a command with subcommands of its own, e.g. `bench compare`
            for command in group.registered_commands:
                command.callback = guarded(command.callback)
            app.add_typer(group, name=name)
            continue
        app.command(name, help=module.main.__doc__)(guarded(module.main))


_register()


def _terminated(signum, _frame) -> None:
    # unwind like Ctrl-C does, so cleanup runs (bench workers stopped, staging folders removed)
    raise SystemExit(128 + signum)


def stop_on_ctrl_break() -> None:
    """Windows: Ctrl-Break (SIGBREAK) stops the command as Ctrl-C does, cleanup included, exit 130,
    where by default it ends the process on the spot. Other platforms have no SIGBREAK; a handler
    can only be set from the main thread."""
    if hasattr(signal, "SIGBREAK") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGBREAK, signal.default_int_handler)  # raises KeyboardInterrupt


def _ctrl_c_kept(hook):
    """An unraisable-exception hook that delivers again a Ctrl-C that arrived inside a finalizer or a
    weakref callback (an import holds some): Python prints such an exception and carries on, so the
    command ran to its end, exit 0, with a traceback on stderr."""

    def handle(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # a moment later, from another thread: raised in the hook, it would be dropped again
            timer = threading.Timer(0.01, _thread.interrupt_main)
            timer.daemon = True
            timer.start()
            return
        hook(unraisable)

    return handle


def tolerate_unencodable_output() -> None:
    """Text a stdout in a legacy encoding (PYTHONIOENCODING=ascii, a cp1252 console) cannot hold is
    written as '?' instead of crashing the command mid-answer; JSON output is ASCII, so it is intact.
    On Windows a pipe or a file gets UTF-8, which any generated text fits (Python would pick the
    legacy code page), unless PYTHONIOENCODING chose an encoding."""
    if not hasattr(sys.stdout, "reconfigure"):
        return
    if sys.platform == "win32" and not os.environ.get("PYTHONIOENCODING") and not sys.stdout.isatty():
        sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    else:
        sys.stdout.reconfigure(errors="replace")


def closed_streams_to_null_device() -> None:
    """A closed stdin, stdout or stderr (`<&-`, `>&-`, some service managers) leaves sys.stdin, sys.stdout
    or sys.stderr None, and the first use fails with an AttributeError. Each gets the null device, opened
    on its own descriptor (the lowest free one), so no file opened later takes that descriptor: stdin reads
    as empty, and the commands that read it say there is nothing there; output is dropped."""
    for name, flags, mode in (("stdin", os.O_RDONLY, "r"), ("stdout", os.O_WRONLY, "w"), ("stderr", os.O_WRONLY, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.open(os.devnull, flags), mode, encoding="utf-8"))


def main() -> None:
    closed_streams_to_null_device()
    tolerate_unencodable_output()
    signal.signal(signal.SIGTERM, _terminated)
    stop_on_ctrl_break()
    sys.unraisablehook = _ctrl_c_kept(sys.unraisablehook)
    try:
        app(prog_name="localai")
    except OSError as exc:
        # --help into a pipe whose reader left, on Windows (EINVAL): click stops quietly with exit 1 on
        # the EPIPE of other platforms, and so does this (a command's own writes are guarded)
        if not is_closed_pipe(exc):
            raise
        _silence_stdout()
        sys.exit(1)
    finally:
        _flush_stdout()  # what click left buffered after an EPIPE would fail again, loudly, at exit


if __name__ == "__main__":
    main()
