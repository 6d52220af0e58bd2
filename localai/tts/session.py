"""A speech session: streamed text in, spoken sentences out, while the text keeps arriving.

    session = start_speech(voice="en-US", out_path=Path("a.wav"))   # or SpeechSession(engine, voice, output)
    for delta in answer:            # e.g. tokens from the chat model
        session.feed(delta)         # splits sentences, queues them; returns at once
    session.finish()                # the answer is complete: queue its last words (returns at once)
    session.close()                 # end of the session: waits until all of it was played and written

A worker thread synthesizes the queued sentences in order and hands the audio to the
output's player thread, so generation, synthesis and playback overlap. `abort()` (Ctrl-C)
drops the queued sentences, stops the one being synthesized and cuts the sound; the
session stays usable for the next answer. A failing engine stops the speech with one
warning, never the text. feed / finish / abort is the chat's interface for output sinks.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from localai.console import warn
from localai.tts.player import AudioOutput
from localai.tts.sentences import SentenceSplitter
from localai.tts.text import prepare_for_speech

_END = None


class SpeechSession:
    def __init__(self, engine, voice: str, output: AudioOutput, lang: str = "en",
                 splitter: SentenceSplitter | None = None):
        self.engine, self.voice, self.output, self.lang = engine, voice, output, lang
        self.splitter = splitter or SentenceSplitter()
        self.timings: list[dict] = []  # one record per spoken sentence
        self.error: str | None = None
        self._started = time.perf_counter()
        self._epoch = 0  # bumped by abort(); sentences queued before it are skipped
        self._said_silent = False  # warned that a sentence gave no audio
        self._queue: queue.Queue = queue.Queue()
        # set when the worker has returned; join() and is_alive() are not relied on: a join that
        # Ctrl-C interrupts marks a running thread as ended (Python < 3.13)
        self._worker_done = threading.Event()
        self._worker = threading.Thread(target=self._run, name="speech", daemon=True)
        self._worker.start()

    def feed(self, delta: str) -> None:
        for sentence in self.splitter.feed(delta):
            self._put(sentence)

    def finish(self) -> None:
        """The text so far is complete (e.g. one chat answer): queue its unfinished last sentence."""
        for sentence in self.splitter.flush():
            self._put(sentence)

    def abort(self) -> None:
        """Stop speaking now: queued sentences are dropped, the sound is cut; later text is spoken again."""
        self._epoch += 1
        self.splitter.flush()
        self.output.interrupt()

    def close(self) -> None:
        """Wait until everything queued was spoken, then release the audio device and finish the file.
        Ctrl-C while waiting stops the speech, finishes the file with what was spoken and is raised again."""
        try:
            self._wait_and_release()
        except KeyboardInterrupt:
            self.abort()
            self._wait_and_release()
            raise

    def _wait_and_release(self) -> None:
        if not self._worker_done.is_set():
            self._queue.put(_END)
            self._worker_done.wait()
        self.output.close()

    def _put(self, sentence: str) -> None:
        self._queue.put((self._epoch, sentence, time.perf_counter()))

    def _run(self) -> None:
        try:
            self._speak_queued()
        finally:
            self._worker_done.set()

    def _speak_queued(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self.error is not None or item[0] != self._epoch or self.output.unheard:
                continue
            try:
                self._speak(*item)
            except Exception as exc:  # the text goes on without speech
                self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warn(f"speech stopped: {self.error}")

    def _speak(self, epoch: int, sentence: str, queued_at: float) -> None:
        text = prepare_for_speech(sentence, self.lang)
        if not text:
            return
        start = time.perf_counter()
        first_audio, samples, held = None, 0, 0.0  # held: waiting for the player to make room
        # read after this sentence's epoch was checked: abort() bumps ours first, then the output's,
        # so a Ctrl-C between the check below and write() is caught by one or the other
        output_epoch = self.output.epoch
        def stopped() -> bool:  # Ctrl-C, or nobody is listening any more
            return epoch != self._epoch or self.output.unheard

        for chunk in self.engine.stream(text, self.voice, should_stop=stopped):
            if epoch != self._epoch:
                return
            first_audio = first_audio or time.perf_counter()
            samples += len(chunk)
            handed = time.perf_counter()
            self.output.write(chunk, epoch=output_epoch)
            held += time.perf_counter() - handed
        done = time.perf_counter()
        synth_s = done - start - held
        audio_s = samples / self.engine.sample_rate
        self.timings.append({
            "text": text,
            "queued_at_s": round(queued_at - self._started, 4),
            "wait_s": round(start - queued_at, 4),  # behind earlier sentences
            "first_audio_s": round((first_audio or done) - start, 4),
            "synth_s": round(synth_s, 4),
            "audio_s": round(audio_s, 4),
            "real_time_factor": round(synth_s / audio_s, 4) if audio_s else None,
        })
        if not samples and not stopped() and not self._said_silent:
            self._said_silent = True
            warn(f"{self.engine.label} gave no audio for {text[:40]!r}: it may not speak this language or script")


def start_speech(tts: str = "auto", voice: str | None = None, lang: str | None = None,
                 out_path: Path | None = None, play: bool = True, model: str = "voxtral-tts",
                 quantize: bool = False, out_flag: str = "--speak-out") -> SpeechSession | None:
    """A session for speaking alongside other output (chat): picks the engine and voice, opens the
    speaker and/or the WAV file. Without a usable speaker or file it warns and returns None."""
    from localai.tts.engines import choose_voice, select_engine
    from localai.tts.player import open_output

    engine = select_engine(tts, model=model, quantize=quantize)
    voice_name = choose_voice(engine, voice, lang)
    engine.load()
    output = open_output(engine.sample_rate, play=play, out_path=out_path, required=False, out_flag=out_flag)
    if output is None:
        return None
    return SpeechSession(engine, voice_name, output, lang=engine.language(voice_name))
