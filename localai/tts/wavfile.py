"""16-bit mono WAV written as the audio arrives: into a file, a named pipe, or stdout (`-`).

Where the header can be filled in at the end (a file written from its start) soundfile writes it,
with the real sizes. A pipe cannot seek back, so it gets the streaming form instead: a 44-byte
header whose RIFF and data sizes are 0xFFFFFFFF (length unknown, as sox and ffmpeg write to a
pipe), then the samples, written as they come. `localai speak --out - | aplay` plays as it speaks.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from localai.outfile import OutputFile

try:
    import fcntl
except ImportError:  # Windows: no file status flags to read
    fcntl = None

WAV_NAME_EXAMPLE = "speech.wav"  # the file name in hints ("name a file, e.g. --out out/speech.wav")
UNKNOWN_SIZE = 0xFFFFFFFF
# names that promise another audio format: a WAV under one of them would not play as what it says
OTHER_AUDIO_SUFFIXES = (".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff")


def check_wav_path(path: str | Path, flag: str) -> Path:
    """The path to write the WAV to (see outfile.check_output_path), refused early when its name says
    it is another audio format."""
    from localai.errors import UsageError
    from localai.outfile import check_output_path

    suffix = Path(str(path)).suffix.lower()
    if suffix in OTHER_AUDIO_SUFFIXES:
        raise UsageError(f"{flag} {path}: the speech is written as WAV, not {suffix[1:].upper()}",
                         f"name the file .wav, e.g. {flag} {Path(str(path)).with_suffix('.wav')}")
    return check_output_path(path, flag, WAV_NAME_EXAMPLE)


def streaming_header(sample_rate: int) -> bytes:
    """RIFF/WAVE header of PCM16 mono audio of unknown length."""
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", UNKNOWN_SIZE, b"WAVE",
                       b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,  # PCM, mono, 2 bytes a sample
                       b"data", UNKNOWN_SIZE)


def pcm16(chunk: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as little-endian int16, scaled by 32768 and clipped as libsndfile does
    (a pipe gets what a file gets, to the rounding: libsndfile's build may round down)."""
    return np.clip(np.rint(chunk * 32768.0), -32768, 32767).astype("<i2").tobytes()


def can_seek_back(stream) -> bool:
    """Whether a header can be rewritten once the audio is complete: a seekable file written from its
    start and not opened for appending (`>>`), where every write lands at the end."""
    if not stream.seekable() or stream.tell() != 0:
        return False
    if fcntl is None:
        return True
    try:
        return not fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_APPEND
    except OSError:  # no file descriptor: an in-memory file
        return True


class WavWriter:
    """A regular file is complete or absent (renamed into place when closed); a pipe or stdout gets
    the WAV as it comes. `flag`: the option that named the path, for errors."""

    def __init__(self, path: str | Path, sample_rate: int, flag: str = "--out"):
        self.out = OutputFile(path, flag, WAV_NAME_EXAMPLE)
        self.path = self.out.path
        self.file = None  # soundfile's, where the header is filled in at the end
        try:
            if can_seek_back(self.out.stream):
                import soundfile

                self.file = soundfile.SoundFile(self.out.stream, "w", samplerate=sample_rate, channels=1,
                                                subtype="PCM_16", format="WAV")
            else:
                self.out.write(streaming_header(sample_rate))
        except BaseException:
            self.out.discard()
            raise
        self.samples = 0

    def write(self, chunk: np.ndarray) -> None:
        chunk = np.clip(chunk, -1.0, 1.0)
        if self.file is not None:
            self.file.write(chunk)
        else:
            self.out.write(pcm16(chunk))
        self.samples += len(chunk)

    def close(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        except OSError as exc:
            self.out.discard()
            raise self.out.error(exc) from None
        self.out.commit()

    def discard(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        finally:
            self.out.discard()
