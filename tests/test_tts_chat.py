"""`localai chat --speak`: the streamed answer is spoken sentence by sentence into a WAV."""

import pytest
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


def test_chat_speak_loads_speech_before_planning_the_cache(tiny_llama, tmp_path, localai_home, monkeypatch):
    """The cache is sized from the memory left: a speech model loaded after that would not fit."""
    from localai.engine.api import Engine
    from localai.tts import session

    steps = []
    real_plan, real_start = Engine.plan_for, session.start_speech
    monkeypatch.setattr(Engine, "plan_for", lambda self, *a, **k: steps.append("plan") or real_plan(self, *a, **k))
    monkeypatch.setattr(session, "start_speech", lambda *a, **k: steps.append("speech") or real_start(*a, **k))
    result = runner.invoke(app, ["--device", "cpu", "chat", str(tiny_llama), "--speak-out", str(tmp_path / "b.wav"),
                                 "--max-new-tokens", "4"], input="Hi\n")
    assert result.exit_code == 0, result.stderr
    assert steps[:2] == ["speech", "plan"]


def test_chat_speech_flags_are_checked_before_the_model_loads(tmp_path, localai_home):
    absent = str(tmp_path / "no-such-model")  # loading it would fail: these errors must come first
    voice = runner.invoke(app, ["chat", absent, "--voice", "en-US"], input="Hi\n")
    assert voice.exit_code == 2 and "--voice applies to spoken answers" in voice.stderr
    missing = tmp_path / "missing" / "a.wav"
    out = runner.invoke(app, ["chat", absent, "--speak-out", str(missing)], input="Hi\n")
    assert out.exit_code == 1 and f"the folder {missing.parent} does not exist" in out.stderr
    assert "loading" not in out.stderr
    mp3 = runner.invoke(app, ["chat", absent, "--speak-out", str(tmp_path / "a.mp3")], input="Hi\n")
    assert mp3.exit_code == 2 and "--speak-out" in mp3.stderr and "written as WAV, not MP3" in mp3.stderr


def test_chat_refuses_an_answer_longer_than_the_context_before_opening_the_wav(tiny_llama, tmp_path, localai_home):
    wav = tmp_path / "a.wav"
    result = runner.invoke(app, ["--device", "cpu", "chat", str(tiny_llama), "--speak-out", str(wav),
                                 "--max-new-tokens", "600"], input="Hi\n")  # the tiny model's context: 512
    assert result.exit_code == 2 and "leaves no room for the prompt in a 512-token context" in result.stderr
    assert "--context" not in result.stderr  # the model's own limit: a larger --context cannot help
    assert list(tmp_path.iterdir()) == []  # no WAV, empty or temporary


@pytest.mark.parametrize("context, message", [("-5", "Invalid value for '--context'"),
                                              ("300", "leaves no room for the prompt in a 300-token context. "
                                                      "Lower --max-new-tokens, or raise --context")])
def test_a_context_with_no_room_for_the_prompt_is_refused_before_the_model_loads(tmp_path, context, message):
    result = runner.invoke(app, ["chat", str(tmp_path / "absent"), "--context", context], input="Hi\n")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert "loading" not in result.stderr
