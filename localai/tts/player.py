"""Audio output on a background thread fed by a queue: a sound card stream, a WAV file, or both.

    output = open_output(16000, play=True, out_path=Path("a.wav"))
    output.write(chunk)      # float32 mono in [-1, 1]; waits only while ~30 s of audio is queued
    output.interrupt()       # Ctrl-C: drop what is queued, cut the sound, stay open
    output.close()           # waits until everything queued was played and written
    output.raise_if_lost()   # an error if the file failed, or playback did with no file

No PortAudio or no output device is one line on stderr (an error when there is nowhere
else for the audio to go); a failure while playing disables the speaker with one warning
and the WAV file, if any, keeps being written. Nothing raises on the thread that feeds it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import numpy as np

from localai.console import warn
from localai.errors import LocalaiError, first_line
from localai.tts.resample import Resampler
from localai.tts.wavfile import WavWriter

_END = None
MAX_QUEUED_S = 30.0  # audio waiting for the speaker; a writer further ahead waits (a long text is not
                     # synthesized into memory hours ahead of what is played)


class PlaybackUnavailable(LocalaiError):
    """This machine cannot play audio (no PortAudio library, no output device)."""


def open_speaker(sample_rate: int):
    """A started sounddevice OutputStream (mono float32) at `sample_rate`, or at the output device's
    own rate when it refuses that one (its `samplerate` then differs: AudioOutput resamples)."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when the PortAudio library is missing
        raise PlaybackUnavailable(f"no audio playback: {exc}", "install PortAudio (libportaudio2)") from None
    try:
        return _started_stream(sounddevice, sample_rate)
    except Exception as exc:  # sounddevice.PortAudioError and friends: no usable device, or not at this rate
        reason = first_line(exc)
    try:
        device_rate = int(sounddevice.query_devices(kind="output")["default_samplerate"])
        if device_rate != sample_rate:
            return _started_stream(sounddevice, device_rate)
    except Exception:  # no output device at all: report the first failure
        pass
    raise PlaybackUnavailable(f"no audio playback: {reason}", "connect an output device")


def _started_stream(sounddevice, rate: int):
    stream = sounddevice.OutputStream(samplerate=rate, channels=1, dtype="float32")
    try:
        stream.start()
    except Exception:
        stream.close()
        raise
    return stream


class AudioOutput:
    def __init__(self, sample_rate: int, speaker=None, out_path: Path | None = None,
                 max_queued_s: float = MAX_QUEUED_S, out_flag: str = "--out"):
        """`speaker`: a started output stream (write/start/stop/abort/close), or None for no playback.
        `out_path`: a WAV file, or `-` for stdout; `out_flag` names the option it came from in errors."""
        self.sample_rate = sample_rate
        self.max_queued = int(max_queued_s * sample_rate)
        self._queued = 0  # samples written and not yet taken by the player thread
        self._room = threading.Condition()
        self.wav = WavWriter(out_path, sample_rate, out_flag) if out_path else None
        self._out_path = out_path
        self.out_flag = out_flag
        self.speaker = speaker
        speaker_rate = int(getattr(speaker, "samplerate", sample_rate) or sample_rate)
        self.speaker_rate = speaker_rate
        self._to_speaker = Resampler(sample_rate, speaker_rate) if speaker_rate != sample_rate else None
        self.samples = 0  # taken so far, at sample_rate
        self.failures: dict[str, str] = {}  # "speaker" / "wav" -> why it stopped
        self.reader_gone = False  # the WAV went to a pipe whose reader closed it (`--out - | head`)
        self._epoch = 0  # bumped by interrupt(); chunks queued before it are dropped
        self._silent = False  # interrupted and nothing played since: close() need not drain the device
        self._lock = threading.Lock()  # keeps _epoch and _silent consistent between the two threads
        self._queue: queue.Queue = queue.Queue()
        # set when the player thread has returned: a join() that Ctrl-C interrupts marks a running
        # thread as ended (Python < 3.13), so neither join() nor is_alive() is relied on
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audio-output", daemon=True)
        self._thread.start()

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def unheard(self) -> bool:
        """Every sink has stopped (the pipe's reader left, the device failed): more audio goes nowhere."""
        return self.wav is None and self.speaker is None

    @property
    def epoch(self) -> int:
        """Changes at every interrupt(); a chunk written with an older one is dropped."""
        return self._epoch

    def write(self, chunk, epoch: int | None = None) -> None:
        """Queue a chunk (float32 mono; numpy array or CPU/GPU tensor). `epoch`: `self.epoch` as
        the writer saw it before making the chunk (default: now), so that an interrupt() that
        comes while the chunk is on its way drops it too."""
        if hasattr(chunk, "detach"):
            chunk = chunk.detach().float().cpu().numpy()
        epoch = self._epoch if epoch is None else epoch
        chunk = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        with self._room:
            while self._queued >= self.max_queued and not self._done.is_set():
                self._room.wait(0.1)
            self._queued += len(chunk)
        self._queue.put((epoch, chunk))

    def interrupt(self) -> None:
        """Drop what is queued and cut the sound within ~0.1 s; the output stays open (Ctrl-C in a chat)."""
        with self._lock:
            self._epoch += 1
            self._silent = True

    def close(self) -> None:
        """Play and write everything still queued, then release the device and finish the file."""
        if not self._done.is_set():
            self._queue.put(_END)
            self._done.wait()
        speaker, self.speaker = self.speaker, None
        if speaker is not None:
            try:
                (speaker.abort if self._silent else speaker.stop)()  # stop() lets the buffered sound play
                speaker.close()
            except Exception as exc:
                warn(f"closing the audio device failed: {exc}")
        wav, self.wav = self.wav, None
        if wav is not None:
            wav.close()

    def raise_if_lost(self) -> None:
        """After close(): an error if the WAV file could not be written, or if playback failed
        and there was no file (the speech went nowhere). A WAV pipe whose reader left raises
        BrokenPipeError: the command then stops quietly, as it does for any closed pipe."""
        if self.reader_gone:
            raise BrokenPipeError("the reader of the audio left")
        if "wav" in self.failures:
            raise LocalaiError(f"the audio file was not written: {self.failures['wav']}",
                               "check the free space and that the folder is writable")
        if "speaker" in self.failures and self._out_path is None:
            raise LocalaiError(f"audio playback failed: {self.failures['speaker']}",
                               f"use {self.out_flag} FILE.wav to save the audio instead")

    def _run(self) -> None:
        try:
            self._play_queued()
        finally:
            self._done.set()

    def _play_queued(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            epoch, chunk = item
            with self._room:
                self._queued -= len(chunk)
                self._room.notify_all()
            if epoch != self._epoch:
                continue
            self.samples += len(chunk)
            if self.wav is not None:
                self._guard("writing the audio file", lambda: self.wav.write(chunk), "wav")
            if self.speaker is not None:
                self._play(chunk, epoch)

    def _play(self, chunk: np.ndarray, epoch: int) -> None:
        """Write in ~0.1 s slices so an interrupt is heard quickly; it also flushes the device buffer."""
        if self._to_speaker is not None:  # the device plays at its own rate
            chunk = self._to_speaker(chunk)
        step = max(1, self.speaker_rate // 10)
        for start in range(0, len(chunk), step):
            with self._lock:
                current = epoch == self._epoch
                if current:
                    self._silent = False
            if not current:
                self._guard("audio playback", self._flush_device, "speaker")
                return
            piece = chunk[start:start + step, None]
            self._guard("audio playback", lambda: self.speaker.write(piece), "speaker")
            if self.speaker is None:
                return

    def _flush_device(self) -> None:
        self.speaker.abort()
        self.speaker.start()

    def _guard(self, what: str, action, sink: str) -> None:
        try:
            action()
        except Exception as exc:  # a sink that fails is dropped, the answer goes on
            if sink == "wav" and isinstance(exc, BrokenPipeError):
                self.reader_gone = True  # not a failure: whoever read the WAV has had enough
            else:
                reason = first_line(exc)
                self.failures[sink] = reason
                warn(f"{what} stopped: {reason}")
            if sink == "speaker":
                self.speaker = None
            else:
                wav, self.wav = self.wav, None
                with contextlib.suppress(Exception):
                    wav.discard()


def open_output(sample_rate: int, play: bool = True, out_path: Path | None = None,
                required: bool = True, out_flag: str = "--out") -> AudioOutput | None:
    """Speaker and/or WAV file. Without a usable speaker: an error if `required` and there is no
    file to write, else a warning (and None when nothing at all can take the audio)."""
    speaker = None
    if play:
        try:
            speaker = open_speaker(sample_rate)
        except PlaybackUnavailable as exc:
            if out_path is None and required:
                raise PlaybackUnavailable(exc.message, f"use {out_flag} FILE.wav to save the audio instead") from None
            warn(exc.message + (f"; writing {out_path} only" if out_path else f"; {out_flag} FILE.wav saves it"))
    if speaker is None and out_path is None:
        return None
    try:
        return AudioOutput(sample_rate, speaker=speaker, out_path=out_path, out_flag=out_flag)
    except LocalaiError:
        if speaker is not None:
            speaker.close()
        raise
