"""Text files named by the user (generate -f, eval --text, quantize --calib, bench --prompts, chat
--history and /load): one wording for whatever keeps them from being read.

    check_input_file(path, "--calib")               # early, before any work
    text = read_text_file(path, "--calib")          # UTF-8; the error says at which byte it is not

Every failure is a LocalaiError whose hint names the flag the path came from.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from localai.errors import LocalaiError

MAX_BYTES_PER_CHAR = 4  # UTF-8


def check_input_file(path: str | Path, flag: str) -> Path:
    """The path (with ~ expanded), refused when it is absent, a folder or not readable."""
    given = Path(path).expanduser()
    if not given.exists():
        raise LocalaiError(f"cannot read {given}: no such file", f"check the path given to {flag}")
    if given.is_dir():
        raise LocalaiError(f"cannot read {given}: it is a folder", f"give {flag} a file")
    if not os.access(given, os.R_OK):
        raise LocalaiError(f"cannot read {given}: permission denied", f"check the path given to {flag}")
    return given


def read_text_file(path: str | Path, flag: str, max_chars: int | None = None) -> str:
    """The file's text, line ends as stored (CRLF stays CRLF); at most `max_chars` characters when
    given (only about as many bytes as those can take are read)."""
    given = check_input_file(path, flag)
    try:
        with open(given, "rb") as handle:
            data = handle.read() if max_chars is None else handle.read(max_chars * MAX_BYTES_PER_CHAR)
    except OSError as exc:  # a pipe gone, a disk error, ...
        raise LocalaiError(f"cannot read {given}: {exc.strerror or exc}", f"check the path given to {flag}") from None
    try:
        # a partial read may end inside a character: it is left out, not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=max_chars is None)
    except UnicodeDecodeError as exc:
        raise LocalaiError(f"{given} is not UTF-8 text ({exc.reason} at byte {exc.start:,})",
                           f"save it as UTF-8, e.g. with iconv, or give {flag} another file") from None
    return text if max_chars is None else text[:max_chars]
