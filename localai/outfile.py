"""Output files named by the user (--out, --output, --history, /save), written so that none is half-written.

    check_output_path(path, "--out", "speech.wav")   # early, before any work: one error wording for all
    with OutputFile(path, "--out", "speech.wav") as out:
        out.write(data)                               # bytes; renamed into place when the block succeeds

A regular file is written under a unique temporary name in its folder and renamed over the target
when complete; a failure or Ctrl-C removes the temporary and leaves any old file as it was. A link
stands for the file it points to (written there, the link stays). A pipe, terminal or device
(/dev/stdout, /dev/null, a named pipe) is written in place, never renamed over, and `-` is stdout.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from contextlib import nullcontext
from pathlib import Path

from localai.console import closed_pipe_as_broken_pipe
from localai.errors import LocalaiError

STDOUT = "-"


def shown(path: str | Path) -> str:
    """How messages name an output path: `-` is "stdout"."""
    return "stdout" if str(path) == STDOUT else str(path)


def is_stdout(path: str | Path) -> bool:
    """`-`, or a path to what stdout writes to (/dev/stdout, /proc/self/fd/1, the file `>` redirected to)."""
    if str(path) == STDOUT:
        return True
    try:
        target, ours = os.stat(Path(path).expanduser()), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # absent, or stdout has no file (a test runner's)
        return False
    # Windows gives pipes and devices no file id (st_ino 0): two of them are not known to be one
    return ours.st_ino != 0 and (target.st_dev, target.st_ino) == (ours.st_dev, ours.st_ino)


def _is_stream(path: Path) -> bool:
    """A pipe, terminal or device: there is nothing to rename over, it is written in place."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output_path(path: str | Path, flag: str, example: str) -> Path:
    """The path to write (a link's target; `-` as is), refused early when it cannot be written: a folder,
    a folder that does not exist or is not writable, a device that is not writable. `flag` and `example`
    (a file name such as "speech.wav") make the hint."""
    if str(path) == STDOUT:
        return Path(STDOUT)
    given = Path(path).expanduser()
    if _is_stream(given):
        if not os.access(given, os.W_OK):
            raise LocalaiError(f"cannot write {given}: permission denied", f"choose another {flag}")
        return given
    target = Path(os.path.realpath(given))
    if target.is_dir():
        raise LocalaiError(f"cannot write {given}: it is a folder", f"name a file, e.g. {flag} {given / example}")
    if target.parent.exists() and not target.parent.is_dir():
        raise LocalaiError(f"cannot write {given}: {target.parent} is not a folder", f"choose another {flag}")
    if not target.parent.is_dir():
        raise LocalaiError(f"cannot write {given}: the folder {target.parent} does not exist",
                           f"create it first or choose another {flag}")
    if not os.access(target.parent, os.W_OK):
        raise LocalaiError(f"cannot write {given}: the folder {target.parent} is not writable",
                           f"choose another {flag}")
    return target


class OutputFile:
    """`stream`: a binary file open for writing (stdout's own for `-`). commit() puts the file in place,
    discard() drops it; as a context manager it commits when the block ends normally and discards on
    any exception."""

    def __init__(self, path: str | Path, flag: str, example: str):
        self.path = Path(path).expanduser()  # as the user named it, for messages
        self.target = check_output_path(path, flag, example)
        self.temporary: Path | None = None
        self.is_stdout = str(self.target) == STDOUT
        if self.is_stdout:
            sys.stdout.flush()  # text written before stays before
            self.stream = sys.stdout.buffer
            return
        if not _is_stream(self.target):
            self.temporary = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.stream = open(self.temporary or self.target, "xb" if self.temporary else "wb")
        except OSError as exc:
            raise self.error(exc) from None

    def write(self, data: bytes) -> None:
        try:
            with self._reader_may_leave():
                self.stream.write(data)
        except BrokenPipeError:
            raise  # a pipe's reader left (`| head`): not a failure, the command stops quietly
        except OSError as exc:
            raise self.error(exc) from None

    def commit(self) -> None:
        try:
            with self._reader_may_leave():
                self._close()
            if self.temporary is not None:
                os.replace(self.temporary, self.target)
        except OSError as exc:
            self.discard()
            if isinstance(exc, BrokenPipeError):
                raise
            raise self.error(exc) from None

    def discard(self) -> None:
        try:
            self._close()
        except OSError:
            pass  # the file is dropped anyway
        finally:
            if self.temporary is not None:
                self.temporary.unlink(missing_ok=True)

    def _reader_may_leave(self):
        """Around a write: stdout or a pipe whose reader left raises BrokenPipeError, on Windows too. A
        regular file has no reader to leave (the EINVAL Windows may raise there is a failure)."""
        return closed_pipe_as_broken_pipe() if self.temporary is None else nullcontext()

    def _close(self) -> None:
        if self.is_stdout:
            self.stream.flush()  # stdout stays open for whatever comes after
        else:
            self.stream.close()

    def error(self, exc: OSError) -> LocalaiError:
        """The one-line report of a failed write."""
        return LocalaiError(f"cannot write {self.path}: {exc.strerror or exc}",
                            "check that the folder is writable and has space")

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_text(path: str | Path, text: str, flag: str, example: str) -> None:
    """`text` as UTF-8 into `path`, through an OutputFile; a failure is one LocalaiError."""
    with OutputFile(path, flag, example) as out:
        out.write(text.encode("utf-8"))
