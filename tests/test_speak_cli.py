"""`localai speak` end to end: stdin, files, pipes, the speaker, failures (no sound card needed)."""

import codecs
import io
import json
import os
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fake_audio import FakeSpeaker, rms
from fake_windows import WindowsPipe, WindowsSys
from typer.testing import CliRunner

from localai.cli import app
from localai.tts import player
from localai.tts.fallback import PicoEngine
from localai.tts.wavfile import UNKNOWN_SIZE, WavWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

runner = CliRunner()


def test_speak_reads_stdin_and_writes_a_wav(tmp_path, localai_home):
    wav = tmp_path / "hello.wav"
    result = runner.invoke(app, ["speak", "--out", str(wav)], input="Hello from localai. It speaks piped text.\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "tts: fallback" in result.stderr and "spoke 2 sentence(s)" in result.stderr
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000 and len(audio) > rate and rms(audio) > 0.02



def test_speak_dash_reads_stdin_in_its_place(tmp_path, localai_home):
    """`-` is stdin, as for generate: it was spoken as a dash (nothing) and the piped text was dropped."""
    result = runner.invoke(app, ["speak", "--out", str(tmp_path / "x.wav"), "--json", "Before it.", "-", "After it."],
                           input="From the pipe.\n")
    assert result.exit_code == 0, result.stderr
    spoken = " ".join(s["text"] for s in json.loads(result.stdout)["sentences"])
    assert spoken == "Before it. From the pipe. After it."


def test_speak_text_argument_that_is_not_utf8_is_one_line(tmp_path, localai_home):
    """A Latin-1 shell passes bytes that Python keeps as lone surrogates: refused as generate refuses them,
    not 'speech failed: UnicodeEncodeError ... try --tts fallback' from the fallback engine itself."""
    from cli_helpers import one_error_line, run_cli

    done = run_cli("speak", "--tts", "fallback", "--out", str(tmp_path / "x.wav"), "caf\udce9 au lait.")
    assert done.returncode == 1 and one_error_line(done.stderr) == \
        "error: the text argument is not UTF-8 text. Convert it to UTF-8, e.g. with iconv"
    assert not (tmp_path / "x.wav").exists()

@pytest.mark.parametrize("mark, encoding", [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
                                            (codecs.BOM_UTF8, "utf-8")], ids=["utf-16-le", "utf-16-be", "utf-8"])
def test_speak_reads_stdin_that_starts_with_a_byte_order_mark(tmp_path, localai_home, mark, encoding):
    """PowerShell 5 pipes UTF-16 with its byte-order mark when $OutputEncoding says so, and UTF-8 may
    come with a mark too: the mark is no text, and UTF-16 is not read as UTF-8. A real pipe as stdin
    (the test runner's stdin has no file descriptor)."""
    import subprocess

    from cli_helpers import REPO_ROOT

    piped = mark + "Grüße aus Köln. Ça parle français aussi.\n".encode(encoding)
    done = subprocess.run([sys.executable, "-m", "localai", "speak", "--tts", "fallback", "--out",
                           str(tmp_path / "x.wav"), "--json"], input=piped, capture_output=True, cwd=REPO_ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    sentences = [s["text"] for s in json.loads(done.stdout)["sentences"]]
    assert sentences == ["Grüße aus Köln.", "Ça parle français aussi."]


def test_speak_json_reports_per_sentence_timings(tmp_path, localai_home):
    result = runner.invoke(app, ["speak", "--tts", "fallback", "--out", str(tmp_path / "x.wav"), "--json",
                                 "One sentence here.", "And a second one."])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["engine"] == "fallback" and report["voice"] == "en-US" and report["sample_rate"] == 16000
    assert [s["text"] for s in report["sentences"]] == ["One sentence here.", "And a second one."]
    assert report["audio_s"] == pytest.approx(sum(s["audio_s"] for s in report["sentences"]), abs=1e-2)


TONE = (0.5 * np.sin(np.arange(4000) / 3)).astype(np.float32)  # 0.25 s


class ToneEngine(PicoEngine):
    """The fallback engine's voices speaking a known tone, in two chunks a sentence (PicoTTS's own
    output can differ with what it spoke before in the same process)."""

    def stream(self, text, voice, should_stop=None):
        yield TONE[:1500]
        yield TONE[1500:]


@pytest.fixture
def tone_engine(monkeypatch):
    from localai.tts import engines

    monkeypatch.setattr(engines, "select_engine", lambda *a, **k: ToneEngine())


def assert_is_the_tone(audio: np.ndarray) -> None:
    assert len(audio) == len(TONE) and np.abs(audio - TONE).max() < 1 / 16000



def test_ctrl_c_keeps_the_wav_and_the_json_of_what_was_spoken(tmp_path, localai_home, tone_engine, monkeypatch):
    """As `generate --json` does: the document of the sentences already spoken, marked "interrupted"."""
    from localai.tts import session as session_module, textin

    sessions = []

    class Recorded(session_module.SpeechSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    def ctrl_c_once_one_sentence_was_spoken(stream):
        yield "The first sentence. The second"
        for _ in range(3000):
            if sessions[0].timings:
                break
            threading.Event().wait(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(session_module, "SpeechSession", Recorded)
    monkeypatch.setattr(textin, "text_chunks", ctrl_c_once_one_sentence_was_spoken)
    wav = tmp_path / "x.wav"
    result = runner.invoke(app, ["speak", "--out", str(wav), "--json"], input="")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    report = json.loads(result.stdout)
    assert report["interrupted"] is True and [s["text"] for s in report["sentences"]] == ["The first sentence."]
    assert_is_the_tone(soundfile.read(wav, dtype="float32")[0])


def test_speak_streams_a_wav_into_a_named_pipe(tmp_path, localai_home, tone_engine):
    fifo = tmp_path / "speech.wav"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = runner.invoke(app, ["speak", "--out", str(fifo), "Hello there."])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert fifo.is_fifo() and list(tmp_path.iterdir()) == [fifo]  # written in place, nothing renamed over it
    data = received[0]
    riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    assert data[:4] == b"RIFF" and riff_size == data_size == UNKNOWN_SIZE  # the streaming form: length unknown
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")  # libsndfile takes the length from the bytes
    assert rate == 16000 and len(data) == 44 + 2 * len(TONE)
    assert_is_the_tone(audio)


def test_speak_out_dash_writes_only_the_wav_to_stdout(speaker, localai_home, tone_engine):
    result = runner.invoke(app, ["speak", "--out", "-", "--play", "Hello there."])
    assert result.exit_code == 0, result.stderr
    audio, rate = soundfile.read(io.BytesIO(result.stdout_bytes), dtype="float32")  # nothing but the WAV
    assert rate == 16000 and len(result.stdout_bytes) == 44 + 2 * len(TONE)
    assert_is_the_tone(audio)
    assert len(speaker.audio) == len(TONE) and "spoke 1 sentence(s), 0.2 s of audio -> stdout" in result.stderr
    both = runner.invoke(app, ["speak", "--out", "-", "--json", "Hello there."])
    assert both.exit_code == 2 and "--json and --out - both write to stdout" in both.stderr
    assert both.stdout_bytes == b""


def test_speak_json_refuses_an_out_path_that_is_stdout_by_another_name(tmp_path):
    """/dev/stdout, or the very file stdout is redirected to, is stdout too: the WAV and the JSON would mix."""
    import subprocess

    from cli_helpers import REPO_ROOT

    redirected = tmp_path / "both.out"
    for out in ("/dev/stdout", str(redirected)):
        with open(redirected, "wb") as stdout:
            done = subprocess.run([sys.executable, "-m", "localai", "speak", "--tts", "fallback", "--out", out,
                                   "--json", "Hi."], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO_ROOT, timeout=120, env=dict(os.environ, LOCALAI_HOME=str(tmp_path)))
        assert done.returncode == 2 and f"--json and --out {out} both write to stdout" in done.stderr
        assert redirected.read_bytes() == b""


@pytest.mark.parametrize("windows", [False, True], ids=["posix", "windows"])
def test_speak_stops_quietly_when_the_reader_of_the_wav_leaves(tmp_path, localai_home, tone_engine, monkeypatch,
                                                               windows):
    """`localai speak --out - | head -c 100`: the closed pipe ends the command as it ends `generate`.
    On Windows the write fails with EINVAL instead of BrokenPipeError."""
    from localai import console, outfile
    from localai.tts import textin

    if windows:
        monkeypatch.setattr(console, "sys", WindowsSys())
        monkeypatch.setattr(outfile, "open", lambda path, mode: WindowsPipe(path, "w"), raising=False)
    fifo = tmp_path / "speech.wav"
    os.mkfifo(fifo)
    read = []

    def slow_pipe(stream):
        for i in range(100):
            read.append(i)
            threading.Event().wait(0.02)
            yield f"Sentence number {i} is here. "

    def read_a_little():
        with open(fifo, "rb") as reader:
            reader.read(100)

    monkeypatch.setattr(textin, "text_chunks", slow_pipe)
    reader = threading.Thread(target=read_a_little, daemon=True)
    reader.start()
    result = runner.invoke(app, ["speak", "--out", str(fifo)], input="")
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert "error" not in result.stderr and "stopped" not in result.stderr
    assert len(read) < 100  # the rest of the text was not waited for


def test_speak_through_a_link_writes_its_target(tmp_path, localai_home, tone_engine):
    target, link = tmp_path / "takes" / "take-1.wav", tmp_path / "latest.wav"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link.symlink_to(target)
    result = runner.invoke(app, ["speak", "--out", str(link), "Hello there."])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink()
    assert_is_the_tone(soundfile.read(target, dtype="float32")[0])
    assert [p.name for p in target.parent.iterdir()] == ["take-1.wav"]


def test_speak_checks_out_before_loading_the_engine(tmp_path, localai_home):
    missing = tmp_path / "missing" / "a.wav"
    result = runner.invoke(app, ["speak", "--tts", "voxtral", "--out", str(missing), "Hi."])  # no weights either
    assert result.exit_code == 1 and f"the folder {missing.parent} does not exist" in result.stderr
    assert "Voxtral" not in result.stderr


@pytest.mark.parametrize("name", ["speech.mp3", "speech.FLAC", "speech.ogg"])
def test_speak_refuses_an_out_name_of_another_audio_format(tmp_path, localai_home, name):
    result = runner.invoke(app, ["speak", "--tts", "voxtral", "--out", str(tmp_path / name), "Hi."])
    suffix = name.rsplit(".", 1)[1].upper()
    assert result.exit_code == 2 and f"the speech is written as WAV, not {suffix}" in result.stderr
    assert f"--out {tmp_path / 'speech.wav'}" in result.stderr and "Voxtral" not in result.stderr
    assert not (tmp_path / name).exists()


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

    monkeypatch.setattr(WavWriter, "write", disk_full)
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
    assert "--tts fallback" not in result.stderr  # the fallback engine is the one that failed
    assert len(read) < 100
