"""Fallback engine, audio output, speech sessions and `localai speak` (no sound card needed)."""

import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from localai.cli import app
from localai.errors import LocalaiError
from localai.tts import player
from localai.tts.fallback import PicoEngine
from localai.tts.player import AudioOutput, PlaybackUnavailable, open_output
from localai.tts.session import SpeechSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

runner = CliRunner()


class FakeSpeaker:
    """Stands in for a sounddevice OutputStream: records what it is asked to play."""

    def __init__(self, fail_after: int | None = None, seconds_per_sample: float = 0.0):
        self.chunks, self.fail_after, self.seconds_per_sample = [], fail_after, seconds_per_sample
        self.stopped = self.aborted = self.closed = False
        self.restarts = 0

    def write(self, data):
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise RuntimeError("device unplugged")
        assert data.dtype == np.float32 and data.ndim == 2 and data.shape[1] == 1
        self.chunks.append(data[:, 0].copy())
        threading.Event().wait(len(data) * self.seconds_per_sample)  # a real device blocks while it plays

    def start(self):
        self.restarts += 1

    def stop(self):
        self.stopped = True

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.fixture
def speaker(monkeypatch) -> FakeSpeaker:
    fake = FakeSpeaker()
    monkeypatch.setattr(player, "open_speaker", lambda rate: fake)
    return fake


@pytest.fixture
def no_speaker(monkeypatch):
    def unavailable(rate):
        raise PlaybackUnavailable("no audio playback: PortAudio library not found", "install PortAudio")

    monkeypatch.setattr(player, "open_speaker", unavailable)


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
    assert "use --out FILE.wav" in excinfo.value.one_line()
    assert open_output(16000, play=True, required=False) is None
    output = open_output(16000, play=True, out_path=tmp_path / "b.wav")
    output.close()
    assert (tmp_path / "b.wav").exists()


def test_unwritable_out_path_is_a_clear_error(tmp_path):
    with pytest.raises(LocalaiError, match="cannot write") as excinfo:
        AudioOutput(16000, out_path=tmp_path / "missing" / "a.wav")
    assert "No such file or directory" in excinfo.value.message and ".tmp" not in excinfo.value.message


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


def test_speak_reads_stdin_and_writes_a_wav(tmp_path, localai_home):
    wav = tmp_path / "hello.wav"
    result = runner.invoke(app, ["speak", "--out", str(wav)], input="Hello from localai. It speaks piped text.\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "tts: fallback" in result.stderr and "spoke 2 sentence(s)" in result.stderr
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000 and len(audio) > rate and rms(audio) > 0.02


def test_speak_json_reports_per_sentence_timings(tmp_path, localai_home):
    result = runner.invoke(app, ["speak", "--tts", "fallback", "--out", str(tmp_path / "x.wav"), "--json",
                                 "One sentence here.", "And a second one."])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["engine"] == "fallback" and report["voice"] == "en-US" and report["sample_rate"] == 16000
    assert [s["text"] for s in report["sentences"]] == ["One sentence here.", "And a second one."]
    assert report["audio_s"] == pytest.approx(sum(s["audio_s"] for s in report["sentences"]), abs=1e-2)


def test_speak_plays_through_the_speaker(speaker, localai_home):
    result = runner.invoke(app, ["speak", "--lang", "de", "Guten Tag."])
    assert result.exit_code == 0, result.stderr
    assert rms(speaker.audio) > 0.02 and speaker.stopped


def test_speak_without_audio_device_says_to_use_out(no_speaker, localai_home):
    result = runner.invoke(app, ["speak", "Hello."])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "no audio playback" in result.stderr and "--out FILE.wav" in result.stderr
    assert "Traceback" not in result.stderr


def test_speak_fails_when_the_wav_cannot_be_written_to_the_end(tmp_path, localai_home, monkeypatch):
    def disk_full(self, chunk):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(player.WavWriter, "write", disk_full)
    result = runner.invoke(app, ["speak", "--out", str(tmp_path / "full.wav"), "Hello there."])
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_speak_fails_when_playback_stops_and_there_is_no_file(monkeypatch, localai_home):
    monkeypatch.setattr(player, "open_speaker", lambda rate: FakeSpeaker(fail_after=0))
    result = runner.invoke(app, ["speak", "Hello there."])
    assert result.exit_code == 1
    assert "audio playback failed: device unplugged" in result.stderr and "--out FILE.wav" in result.stderr


def test_speak_stops_reading_stdin_once_the_engine_failed(tmp_path, localai_home, monkeypatch):
    from localai.tts import engines, textin

    class FailingPico(PicoEngine):
        def stream(self, text, voice, should_stop=None):
            raise RuntimeError("model exploded")
            yield  # pragma: no cover

    read = []

    def slow_pipe(stream):
        for i in range(100):  # e.g. `localai generate ... | localai speak`: 5 s of text
            read.append(i)
            threading.Event().wait(0.05)
            yield f"Sentence number {i} is here. "

    monkeypatch.setattr(engines, "select_engine", lambda *a, **k: FailingPico())
    monkeypatch.setattr(textin, "text_chunks", slow_pipe)
    result = runner.invoke(app, ["speak", "--out", str(tmp_path / "f.wav")], input="")
    assert result.exit_code == 1 and "speech failed: RuntimeError: model exploded" in result.stderr
    assert len(read) < 100


def test_speak_lists_voices_and_rejects_bad_options(localai_home):
    result = runner.invoke(app, ["speak", "--tts", "fallback", "--list-voices"])
    assert result.exit_code == 0 and "fr-FR" in result.stdout.split()
    result = runner.invoke(app, ["speak", "--tts", "loud", "Hi."])
    assert result.exit_code == 2 and "unknown --tts 'loud'" in result.stderr
    result = runner.invoke(app, ["speak", "--voice", "robot", "--out", "x.wav", "Hi."])
    assert result.exit_code == 1 and "no voice 'robot'" in result.stderr


def test_speak_voxtral_without_weights_is_one_line(localai_home):
    result = runner.invoke(app, ["speak", "--tts", "voxtral", "Hi."])
    assert result.exit_code == 1
    assert "Voxtral weights (voxtral-tts) are not downloaded" in result.stderr and "--tts fallback" in result.stderr


def test_speak_with_a_tiny_voxtral_checkpoint(tmp_path, localai_home):
    from make_tiny_voxtral import write_tiny_voxtral

    folder = write_tiny_voxtral(tmp_path / "tiny-voxtral")
    wav = tmp_path / "v.wav"
    result = runner.invoke(app, ["--device", "cpu", "speak", "--tts", "voxtral", "--tts-model", str(folder),
                                 "--voice", "neutral_male", "--out", str(wav), "Hi."])
    assert result.exit_code == 0, result.stderr
    assert "CC BY-NC 4.0" in result.stderr and "tts: Voxtral 4B TTS (cpu" in result.stderr
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 24000 and len(audio) > 0 and len(audio) % 1920 == 0
    again = runner.invoke(app, ["--device", "cpu", "speak", "--tts", "voxtral", "--tts-model", str(folder),
                                "--list-voices"])
    assert again.exit_code == 0 and again.stdout.split() == ["casual_female", "neutral_male"]
    assert "CC BY-NC 4.0" not in again.stderr  # the notice is shown once
    four_bit = runner.invoke(app, ["--device", "cpu", "speak", "--tts", "voxtral", "--tts-model", str(folder),
                                   "--quantize", "--out", str(wav), "--json", "Hi."])
    assert four_bit.exit_code == 0, four_bit.stderr
    assert "4-bit TurboQuant" in four_bit.stderr and json.loads(four_bit.stdout)["engine"] == "voxtral"


def test_voxtral_voices_are_listed_and_checked_without_loading_the_model(tmp_path, localai_home, monkeypatch):
    from make_tiny_voxtral import write_tiny_voxtral

    from localai.tts import engines

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engines, "load_synthesizer", no_load)
    folder = write_tiny_voxtral(tmp_path / "tiny-voxtral")
    base = ["--device", "cpu", "speak", "--tts", "voxtral", "--tts-model", str(folder)]
    listed = runner.invoke(app, base + ["--list-voices", "--json"])
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout)["voices"] == ["casual_female", "neutral_male"]
    mistyped = runner.invoke(app, base + ["--voice", "robot", "--out", str(tmp_path / "x.wav"), "Hi."])
    assert mistyped.exit_code == 1 and "Voxtral has no voice 'robot'" in mistyped.stderr
    assert not (tmp_path / "x.wav").exists()


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


def test_doctor_reports_the_speech_engines(localai_home):
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["tts fallback"]["status"] == "ok"
    assert "--tts auto uses fallback" in records["tts auto"]["detail"]
