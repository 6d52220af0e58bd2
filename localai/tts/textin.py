"""Text arriving on a stream (stdin from a pipe), yielded as soon as it arrives, not line by line."""

from __future__ import annotations

import codecs
import io
import os
from collections.abc import Iterator
from typing import TextIO

UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def text_chunks(stream: TextIO, size: int = 4096) -> Iterator[str]:
    """Read `stream` to its end in pieces, each as soon as the writer has flushed it. The bytes are
    UTF-8, or UTF-16 where they begin with its byte-order mark (PowerShell 5 pipes that when
    $OutputEncoding says so); a UTF-8 byte-order mark is dropped."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None:  # an in-memory stream
        yield from iter(lambda: stream.read(size), "")
        return
    decoder, start = None, b""
    while True:
        data = os.read(fd, size)  # returns what is there, without waiting for a full buffer
        ended = not data
        if decoder is None:  # the encoding is known from the first two bytes
            start += data
            if len(start) < 2 and not ended:
                continue
            decoder, data = _decoder_for(start), start
        text = decoder.decode(data, final=ended)
        if text:
            yield text
        if ended:
            return


def text_to_speak(arguments: list[str], stdin: TextIO) -> Iterator[str]:
    """The text of `speak`'s arguments, in order, one space apart; `-` stands for all of stdin
    (read as it arrives), as do no arguments at all."""
    for index, argument in enumerate(arguments or ["-"]):
        if index:
            yield " "
        if argument == "-":
            yield from text_chunks(stdin)
        else:
            yield argument


def _decoder_for(start: bytes) -> codecs.IncrementalDecoder:
    """UTF-16 (the order its mark gives; the mark is not text), else UTF-8 without a leading mark."""
    encoding = "utf-16" if start.startswith(UTF16_BOMS) else "utf-8-sig"
    return codecs.getincrementaldecoder(encoding)(errors="replace")
