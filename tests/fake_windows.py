"""Windows behaviour the tests simulate on any platform."""

import errno
import io
import os
import sys


class WindowsPipe(io.FileIO):
    """A pipe written as on Windows: once its reader has left, a write fails with EINVAL (how the C
    runtime reports ERROR_NO_DATA), not with BrokenPipeError."""

    def write(self, data):
        try:
            return super().write(data)
        except BrokenPipeError:
            raise OSError(errno.EINVAL, "Invalid argument") from None


def pipe_whose_reader_left() -> WindowsPipe:
    """The writing end of a pipe whose reading end is already closed."""
    reader, writer = os.pipe()
    os.close(reader)
    return WindowsPipe(writer, "w")


class WindowsSys:
    """`sys` as a module of localai sees it on Windows: put it in the module's place of `sys`, since a
    whole interpreter told that it runs on Windows fails in its own lazy imports."""

    platform = "win32"

    def __getattr__(self, name):
        return getattr(sys, name)
