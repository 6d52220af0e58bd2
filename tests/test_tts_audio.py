"""Fallback engine, audio output and speech sessions (no sound card needed); `localai speak` is in test_speak_cli.py."""

import signal
import sys
import threading

import numpy as np
import pytest
import soundfile
from fake_audio import FakeSpeaker, rms

from localai.errors import LocalaiError
from localai.tts.fallback import PicoEngine
from localai.tts.player import AudioOutput, PlaybackUnavailable, open_output
from localai.tts.session import SpeechSession


def test_fallback_engine_speaks_audibly():
    engine = PicoEngine()
    audio = np.concatenate(list(engine.stream("Hello from localai.", "en-US")))
    assert engine.sample_rate == 16000
    assert audio.dtype == np.float32 and 0.5 < len(audio) / 16000 < 5
    assert rms(audio) > 0.02 and np.abs(audio).max() <= 1.0


def test_fallback_voices_follow_language_and_reject_unknown_ones():
    engine = PicoEngine()
    assert engine.resolve_voice(None, "fr") == "fr-FR"
    assert engine.resolve_voice("en_gb", None) == "en-GB"
    assert engine.resolve_voice(None, None) == "en-US"
    with pytest.raises(LocalaiError, match="cannot speak 'ja'"):
        engine.resolve_voice(None, "ja")
    with pytest.raises(LocalaiError, match="no voice 'casual_male'"):
        engine.resolve_voice("casual_male", None)


def test_playback_goes_through_the_output_stream_in_order():
    fake = FakeSpeaker()
    output = AudioOutput(16000, speaker=fake)
    chunks = [np.full(100, i / 10, dtype=np.float32) for i in range(5)]
    for chunk in chunks:
        output.write(chunk)
    output.close()
    np.testing.assert_array_equal(fake.audio, np.concatenate(chunks))
    assert fake.stopped and fake.closed and not fake.aborted
    assert output.seconds == 500 / 16000


def test_a_writer_far_ahead_of_the_speaker_waits():
    fake = FakeSpeaker(seconds_per_sample=1 / 16000)  # plays in real time
    output = AudioOutput(16000, speaker=fake, max_queued_s=0.5)
    epoch = output.epoch
    writer = threading.Thread(target=lambda: [output.write(np.full(4000, 0.1, np.float32), epoch=epoch)
                                              for _ in range(40)])
    writer.start()  # 10 s of audio, synthesized much faster than it plays
    writer.join(0.5)
    assert writer.is_alive() and output._queued <= 8000 + 4000
    output.interrupt()  # what is queued and what is still to come is dropped, which makes room at once
    writer.join(5)
    assert not writer.is_alive()
    output.close()
    assert len(fake.audio) < 16000 * 10


def test_a_failing_device_stops_playback_but_not_the_file(tmp_path):
    fake = FakeSpeaker(fail_after=1)
    output = AudioOutput(16000, speaker=fake, out_path=tmp_path / "a.wav")
    for _ in range(3):
        output.write(np.full(160, 0.5, dtype=np.float32))
    output.close()
    audio, rate = soundfile.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 16000 and len(audio) == 480 and len(fake.chunks) == 1


def test_no_playback_device_needs_out_or_warns(no_speaker, tmp_path):
    with pytest.raises(PlaybackUnavailable) as excinfo:
        open_output(16000, play=True)
    assert "Use --out FILE.wav" in excinfo.value.one_line()
    assert open_output(16000, play=True, required=False) is None
    output = open_output(16000, play=True, out_path=tmp_path / "b.wav")
    output.close()
    assert (tmp_path / "b.wav").exists()


def test_unwritable_out_path_is_a_clear_error(tmp_path):
    with pytest.raises(LocalaiError, match="cannot write") as excinfo:
        AudioOutput(16000, out_path=tmp_path / "missing" / "a.wav")
    assert "the folder" in excinfo.value.message and "does not exist" in excinfo.value.message
    assert ".tmp" not in excinfo.value.message


def test_out_path_that_is_a_folder_is_refused_before_speaking(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(LocalaiError, match="it is a folder"):
        AudioOutput(16000, out_path=folder)
    assert list(tmp_path.iterdir()) == [folder]  # no temporary file beside it


def test_session_speaks_streamed_text_into_a_wav(tmp_path):
    wav = tmp_path / "session.wav"
    session = SpeechSession(PicoEngine(), "en-US", AudioOutput(16000, out_path=wav))
    for char in "Hello from localai. This answer has **two** sentences":
        session.feed(char)
    session.finish()
    session.close()
    assert [t["text"] for t in session.timings] == ["Hello from localai.", "This answer has two sentences"]
    assert all(t["audio_s"] > 0.3 and t["synth_s"] >= t["first_audio_s"] >= 0 for t in session.timings)
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000 and rms(audio) > 0.02
    assert abs(len(audio) / rate - sum(t["audio_s"] for t in session.timings)) < 1e-3
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed


class SlowEngine:
    """Yields audio slowly so the session can be stopped mid-sentence."""

    name, sample_rate = "slow", 16000

    def __init__(self):
        self.started = threading.Event()

    def stream(self, text, voice, should_stop=None):
        for _ in range(200):
            self.started.set()
            threading.Event().wait(0.01)
            yield np.full(160, 0.1, dtype=np.float32)


def test_abort_stops_synthesis_and_playback_and_keeps_the_file(tmp_path):
    engine, fake = SlowEngine(), FakeSpeaker()
    output = AudioOutput(16000, speaker=fake, out_path=tmp_path / "c.wav")
    session = SpeechSession(engine, "v", output)
    session.feed("A sentence that takes a long time to say. And another one that is never spoken. ")
    assert engine.started.wait(5)
    for _ in range(500):  # until some audio went out
        if output.samples:
            break
        threading.Event().wait(0.01)
    session.abort()
    session.close()
    assert fake.aborted and not fake.stopped and fake.closed
    assert [t["text"] for t in session.timings] == []  # neither sentence finished
    audio, _ = soundfile.read(tmp_path / "c.wav", dtype="float32")
    assert 0 < len(audio) < 200 * 160


def test_ctrl_c_while_close_waits_stops_the_speech_and_finishes_the_file(tmp_path):
    engine, fake = SlowEngine(), FakeSpeaker()
    output = AudioOutput(16000, speaker=fake, out_path=tmp_path / "e.wav")
    session = SpeechSession(engine, "v", output)
    session.feed("A sentence that takes a long time to say. And another one that is never spoken.")
    session.finish()
    assert engine.started.wait(5)
    threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        session.close()  # e.g. chat waiting for the last sentences of its answer
    assert fake.aborted and fake.closed and not session._worker.is_alive()
    audio, _ = soundfile.read(tmp_path / "e.wav", dtype="float32")
    assert 0 < len(audio) < 200 * 160
    assert not list(tmp_path.glob(".*tmp"))


class LingeringEngine(SlowEngine):
    """Notices a stop only after its current step (a model's forward pass) ends."""

    def __init__(self):
        super().__init__()
        self.returned = threading.Event()

    def stream(self, text, voice, should_stop=None):
        self.started.set()
        while not should_stop():
            threading.Event().wait(0.01)
        threading.Event().wait(0.3)
        self.returned.set()
        yield from ()


def test_ctrl_c_while_close_waits_for_the_engine_waits_until_it_has_stopped():
    """An interrupted Thread.join (Python < 3.13) marks a running thread as ended: close() must not
    trust it, or the command exits while the engine still runs (a C++ abort at interpreter exit)."""
    engine = LingeringEngine()
    session = SpeechSession(engine, "v", AudioOutput(16000, speaker=FakeSpeaker()))
    session.feed("A sentence that the engine is still working on.")
    session.finish()
    assert engine.started.wait(5)
    threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        session.close()
    assert engine.returned.is_set()


def test_after_an_abort_the_next_answer_is_spoken(tmp_path):
    fake = FakeSpeaker()
    session = SpeechSession(PicoEngine(), "en-US", AudioOutput(16000, speaker=fake))
    session.feed("This first answer gets interrupted")
    session.abort()
    session.feed("The second answer is spoken in full.")
    session.finish()
    session.close()
    assert [t["text"] for t in session.timings] == ["The second answer is spoken in full."]
    assert fake.stopped and rms(fake.audio) > 0.02


def test_a_chunk_on_its_way_to_the_player_when_ctrl_c_comes_is_not_played():
    fake = FakeSpeaker()
    output = AudioOutput(16000, speaker=fake)
    session = SpeechSession(PicoEngine(), "en-US", output)
    hand_over = output.write

    def ctrl_c_then_write(chunk, **kwargs):
        session.abort()  # Ctrl-C lands after the session checked for it, before the chunk is queued
        hand_over(chunk, **kwargs)

    output.write = ctrl_c_then_write
    session.feed("This sentence was synthesized just before Ctrl-C.")
    session.finish()
    session.close()
    assert fake.chunks == [] and fake.aborted


def test_interrupt_cuts_playback_between_slices():
    fake = FakeSpeaker(seconds_per_sample=0.2 / 16000)  # plays 5x faster than real time
    output = AudioOutput(16000, speaker=fake)
    output.write(np.full(16000 * 5, 0.2, dtype=np.float32))  # 5 s, played in 0.1 s slices
    for _ in range(500):
        if fake.chunks:
            break
        threading.Event().wait(0.01)
    output.interrupt()
    output.write(np.full(1600, 0.3, dtype=np.float32))  # after the interrupt: played
    output.close()
    assert len(fake.audio) < 16000 * 5 and fake.audio[-1] == np.float32(0.3)
    assert fake.aborted and fake.restarts == 1  # the device buffer was flushed once


def test_ctrl_c_while_the_last_audio_plays_closes_the_device_after_the_player_has_stopped(capsys):
    """As for the session: a Ctrl-C that interrupts close()'s wait must not let the device be closed
    under the player thread, which is still playing it."""
    class Speaker(FakeSpeaker):
        def __init__(self):
            super().__init__(seconds_per_sample=1 / 16000)  # plays in real time
            self.in_write = False

        def write(self, data):
            self.in_write = True
            super().write(data)
            self.in_write = False

        def close(self):
            assert not self.in_write, "closed while the player writes to it"
            super().close()

    fake = Speaker()
    output = AudioOutput(16000, speaker=fake)
    output.write(np.full(16000 * 3, 0.2, dtype=np.float32))
    threading.Timer(0.25, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        output.close()
    output.interrupt()
    output.close()
    threading.Event().wait(0.2)  # a player thread left running would have failed by now
    assert fake.closed and fake.aborted and "stopped" not in capsys.readouterr().err


class BrokenEngine:
    name, sample_rate = "broken", 16000

    def stream(self, text, voice, should_stop=None):
        raise RuntimeError("model exploded")
        yield  # pragma: no cover


def test_a_failing_engine_stops_speech_without_raising(tmp_path):
    session = SpeechSession(BrokenEngine(), "v", AudioOutput(16000, out_path=tmp_path / "d.wav"))
    session.feed("First sentence is here. Second sentence is here.")
    session.finish()
    session.close()
    assert session.error == "RuntimeError: model exploded" and session.timings == []


def test_start_speech_for_chat_keeps_one_wav_across_answers(no_speaker, tmp_path, localai_home):
    from localai.tts.session import start_speech

    assert start_speech(tts="fallback") is None  # no speaker and no file: a warning, no session
    session = start_speech(tts="fallback", lang="it", out_path=tmp_path / "chat.wav")
    for answer in ("Ciao, come stai oggi", "Bene, grazie mille"):
        for word in answer.split(" "):
            session.feed(word + " ")
        session.finish()
    session.close()
    assert [t["text"] for t in session.timings] == ["Ciao, come stai oggi", "Bene, grazie mille"]
    audio, rate = soundfile.read(tmp_path / "chat.wav", dtype="float32")
    assert rate == 16000 and rms(audio) > 0.02




def test_resampling_is_seamless_across_chunks_and_keeps_the_pitch():
    from localai.tts.resample import Resampler

    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)  # 1 s at 16 kHz
    whole = Resampler(16000, 48000)(tone)
    resampler, pieces, start = Resampler(16000, 48000), [], 0
    for size in (1, 999, 4000, 3, 7000, 3997):
        pieces.append(resampler(tone[start:start + size]))
        start += size
    chunked = np.concatenate(pieces)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert abs(len(whole) - 48000) <= 3
    assert np.argmax(np.abs(np.fft.rfft(whole))) == 440  # 1 s of audio: bin k is k Hz


class FakeSoundDevice:
    """sounddevice whose default output plays only at 48 kHz, as some sound cards do."""

    class OutputStream(FakeSpeaker):
        def __init__(self, samplerate, channels, dtype):
            if samplerate != 48000:
                raise RuntimeError("Error opening OutputStream: Invalid sample rate [PaErrorCode -9997]")
            super().__init__()
            self.samplerate = samplerate

    @staticmethod
    def query_devices(kind):
        return {"name": "speakers", "default_samplerate": 48000.0}


def test_a_device_that_refuses_the_engines_rate_plays_resampled_audio(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice)
    output = open_output(16000, play=True, out_path=tmp_path / "a.wav")
    assert output.speaker.samplerate == 48000
    output.write(np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32))
    speaker = output.speaker
    output.close()
    assert abs(len(speaker.audio) - 48000) <= 3 and rms(speaker.audio) > 0.5
    assert soundfile.info(tmp_path / "a.wav").samplerate == 16000  # the file keeps the engine's rate


def test_a_wav_to_a_pipe_on_stdout_is_streamed_with_the_samples_a_file_gets(tmp_path, monkeypatch):
    """`localai speak --out - | aplay`: stdout cannot seek back to fill in the header, so the header
    says "length unknown" and the samples follow as they come: what a file gets, to the rounding."""
    import io
    import os

    from localai.tts.wavfile import UNKNOWN_SIZE, WavWriter

    tone = (0.9 * np.sin(np.arange(4000) / 5)).astype(np.float32)
    tone[:3] = [1.5, -1.5, 0.0]  # clipped alike
    in_file = WavWriter(tmp_path / "a.wav", 16000)
    in_file.write(tone)
    in_file.close()
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(open(write_end, "wb")))
    received = []
    reader = threading.Thread(target=lambda: received.append(open(read_end, "rb").read()), daemon=True)
    reader.start()
    to_stdout = WavWriter("-", 16000)
    for piece in np.array_split(tone, 3):
        to_stdout.write(piece)
    to_stdout.close()
    sys.stdout.buffer.close()  # the end of the process, for the reader
    reader.join(timeout=10)
    data = received[0]
    assert data[4:8] == data[40:44] == UNKNOWN_SIZE.to_bytes(4, "little")
    streamed, rate = soundfile.read(io.BytesIO(data), dtype="int16")  # libsndfile reads the unknown length
    written, _ = soundfile.read(tmp_path / "a.wav", dtype="int16")
    assert rate == 16000 and len(streamed) == len(tone) and streamed[1] == -32768
    assert np.abs(streamed.astype(int) - written).max() <= 1


def test_a_wav_appended_to_is_streamed_not_patched(tmp_path):
    """`--out - >> a.wav` appends: a header rewritten at offset 0 would land at the end instead."""
    from localai.tts.wavfile import can_seek_back

    with open(tmp_path / "a.wav", "ab") as appending, open(tmp_path / "b.wav", "wb") as fresh:
        assert not can_seek_back(appending) and can_seek_back(fresh)
        fresh.write(b"x")
        assert not can_seek_back(fresh)  # not at its start: the header would overwrite what came before
