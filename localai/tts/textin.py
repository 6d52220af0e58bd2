"""Text arriving on a stream (stdin from a pipe), yielded as soon as it arrives, not line by line."""

from __future__ import annotations

import codecs
import io
import os
from collections.abc import Iterator
from typing import TextIO


def text_chunks(stream: TextIO, size: int = 4096) -> Iterator[str]:
    """Read `stream` to its end in pieces, each as soon as the writer has flushed it."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None:  # an in-memory stream
        yield from iter(lambda: stream.read(size), "")
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = os.read(fd, size)  # returns what is there, without waiting for a full buffer
        text = decoder.decode(data, final=not data)
        if text:
            yield text
        if not data:
            return
