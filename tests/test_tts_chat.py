"""`localai chat --speak`: the streamed answer is spoken sentence by sentence into a WAV."""

import soundfile
from typer.testing import CliRunner

from localai.cli import app

runner = CliRunner()


def test_chat_speak_through_a_pipe_writes_the_spoken_answer(tiny_llama, tmp_path, localai_home):
    wav = tmp_path / "a.wav"
    result = runner.invoke(app, ["--device", "cpu", "chat", str(tiny_llama), "--speak", "--speak-out", str(wav),
                                 "--temperature", "0", "--max-new-tokens", "40"],
                           input="Hello, who are you?\n")
    assert result.exit_code == 0, result.stderr
    answer = result.stdout.strip()
    assert answer  # the text still streams to stdout
    assert "tts: fallback" in result.stderr
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000 and len(audio) > 0
    assert not list(tmp_path.glob(".*tmp"))


def test_chat_speak_without_audio_device_warns_and_still_answers(tiny_llama, localai_home, monkeypatch):
    from localai.tts import player
    from localai.tts.player import PlaybackUnavailable

    def unavailable(rate):
        raise PlaybackUnavailable("no audio playback: PortAudio library not found")

    monkeypatch.setattr(player, "open_speaker", unavailable)
    result = runner.invoke(app, ["--device", "cpu", "chat", str(tiny_llama), "--speak", "--max-new-tokens", "8"],
                           input="Hi\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    stderr = " ".join(result.stderr.split())  # the console wraps long lines
    assert "no audio playback" in stderr and "--speak-out FILE.wav" in stderr
