"""`localai speak`: choosing the engine and the voice (the offline voice, Voxtral on a tiny random
checkpoint), options that do not apply, and text a voice cannot speak."""

import json
import sys
from pathlib import Path

import pytest
import soundfile
from typer.testing import CliRunner

from localai.cli import app
from localai.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

runner = CliRunner()


def test_speak_lists_voices_and_rejects_bad_options(localai_home):
    result = runner.invoke(app, ["speak", "--tts", "fallback", "--list-voices"])
    assert result.exit_code == 0 and "fr-FR" in result.stdout.split()
    result = runner.invoke(app, ["speak", "--tts", "loud", "Hi."])
    assert result.exit_code == 2 and "unknown --tts 'loud'" in result.stderr
    result = runner.invoke(app, ["speak", "--voice", "robot", "--out", "x.wav", "Hi."])
    assert result.exit_code == 1 and "no voice 'robot'" in result.stderr


def test_speak_refuses_a_voice_and_a_language_that_disagree(tmp_path, localai_home):
    wav = tmp_path / "x.wav"
    clash = runner.invoke(app, ["speak", "--tts", "fallback", "--voice", "en-GB", "--lang", "fr", "--out", str(wav),
                                "Hi."])
    assert clash.exit_code == 2 and "voice en-GB speaks en, not fr" in clash.stderr and not wav.exists()
    agree = runner.invoke(app, ["speak", "--tts", "fallback", "--voice", "en-GB", "--lang", "en-gb", "--out",
                                str(wav), "--json", "Hi."])
    assert agree.exit_code == 0, agree.stderr
    assert json.loads(agree.stdout)["voice"] == "en-GB"


def test_speak_quantize_is_refused_or_flagged_where_it_cannot_apply(tmp_path, localai_home):
    """--quantize is for Voxtral: refused with --tts fallback, a warning when auto falls back."""
    wav = tmp_path / "x.wav"
    refused = runner.invoke(app, ["speak", "--tts", "fallback", "--quantize", "--out", str(wav), "Hi."])
    assert refused.exit_code == 2 and "--quantize applies to Voxtral" in refused.stderr and not wav.exists()
    warned = runner.invoke(app, ["speak", "--quantize", "--out", str(wav), "Hi."])
    assert warned.exit_code == 0, warned.stderr
    assert "--quantize does nothing here" in warned.stderr and "tts: fallback" in warned.stderr


def test_text_the_voice_cannot_speak_is_warned_about_and_all_of_it_is_an_error(tmp_path, localai_home):
    """The offline voice says nothing for Chinese: a warning names the sentence, and when no audio came
    out at all the command fails instead of reporting "0.0 s of audio" with exit 0."""
    wav = tmp_path / "x.wav"
    mixed = runner.invoke(app, ["speak", "--tts", "fallback", "--out", str(wav), "Hello there my friend. 你好，世界。"])
    assert mixed.exit_code == 0, mixed.stderr
    assert "gave no audio for '你好，世界。'" in mixed.stderr and "spoke 2 sentence(s)" in mixed.stderr
    silent = runner.invoke(app, ["speak", "--tts", "fallback", "--out", str(wav), "你好，世界。"])
    assert silent.exit_code == 1 and "error: PicoTTS (py-nanotts) gave no audio for this text" in silent.stderr


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
    engine = engines.select_engine("voxtral", model=str(folder))
    assert engines.choose_voice(engine, "Neutral_Male", "en") == "neutral_male"
    with pytest.raises(UsageError, match="voice casual_female speaks en, not fr"):
        engines.choose_voice(engine, "casual_female", "fr")
    mistyped = runner.invoke(app, base + ["--voice", "robot", "--out", str(tmp_path / "x.wav"), "Hi."])
    assert mistyped.exit_code == 1 and "Voxtral has no voice 'robot'" in mistyped.stderr
    assert not (tmp_path / "x.wav").exists()


def test_doctor_reports_the_speech_engines(localai_home):
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["tts fallback"]["status"] == "ok"
    assert "--tts auto uses fallback" in records["tts auto"]["detail"]


def test_a_text_model_given_as_the_voxtral_model_is_named_as_such(tiny_llama, localai_home, tmp_path):
    for tts in ("voxtral", "auto"):
        result = runner.invoke(app, ["--device", "cpu", "speak", "--tts", tts, "--tts-model", str(tiny_llama),
                                     "--out", str(tmp_path / "x.wav"), "Hi."])
        assert result.exit_code == 1 and "is not a Voxtral TTS checkpoint" in result.stderr, result.stderr
    assert not (tmp_path / "x.wav").exists()
