"""Speak text aloud or into a WAV file (Voxtral TTS, or an offline voice without weights or GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def main(
    text: Optional[List[str]] = typer.Argument(None, help="Text to speak; - (or no text) reads it from stdin."),
    voice: Optional[str] = typer.Option(None, "--voice", help="Voice name (see --list-voices)."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Language code (en, fr, de, ...) to pick a voice."),
    tts: str = typer.Option("auto", "--tts", help="auto, voxtral or fallback."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the speech to this WAV file; - for stdout (a pipe gets the WAV as it is spoken)."),
    play: bool = typer.Option(False, "--play", help="With --out: play the speech as well."),
    list_voices: bool = typer.Option(False, "--list-voices", help="List the engine's voices and exit."),
    quantize: bool = typer.Option(False, "--quantize", help="Voxtral: 4-bit TurboQuant backbone and acoustic head (a folder from `localai quantize` already is)."),
    tts_model: str = typer.Option("voxtral-tts", "--tts-model", help="Voxtral weights: the alias or a folder."),
    json_output: bool = typer.Option(False, "--json", help="Print per-sentence timings as JSON."),
) -> None:
    """Speak text aloud or into a WAV file (Voxtral TTS, or an offline voice without weights or GPU)."""
    import sys

    from localai.console import info, out as print_data, out_json, warn
    from localai.engine.inputs import utf8_text
    from localai.errors import LocalaiError, UsageError
    from localai.outfile import is_stdout, shown
    from localai.tts.engines import choose_voice, select_engine
    from localai.tts.player import open_output
    from localai.tts.session import SpeechSession
    from localai.tts.textin import text_to_speak
    from localai.tts.wavfile import check_wav_path

    if not text and not list_voices and sys.stdin.isatty():
        raise UsageError("no text to speak", "give TEXT or pipe text into stdin, e.g. `echo Hello | localai speak`")
    for argument in text or []:  # bytes that are not UTF-8 (a Latin-1 shell), before the engine loads
        utf8_text(argument, "the text argument")
    if out is not None and not list_voices:  # before the engine loads, not after
        to_stdout = is_stdout(out)
        if to_stdout and json_output:
            raise UsageError(f"--json and --out {out} both write to stdout", "write the WAV to a file, or drop --json")
        if to_stdout and sys.stdout.isatty():
            raise UsageError(f"--out {out} would write the WAV's bytes to the terminal",
                             "pipe it into a player (`| aplay`) or name a file, e.g. --out speech.wav")
        check_wav_path(out, "--out")
    engine = select_engine(tts, model=tts_model, quantize=quantize)
    if list_voices:
        if json_output:
            out_json({"engine": engine.name, "voices": engine.voices()})
        else:
            print_data("\n".join(engine.voices()))
        return
    voice_name = choose_voice(engine, voice, lang)
    engine.load()
    output = open_output(engine.sample_rate, play=out is None or play, out_path=out)
    session = SpeechSession(engine, voice_name, output, lang=engine.language(voice_name))
    try:
        for chunk in text_to_speak(text, sys.stdin):
            if session.error or output.unheard:  # do not wait for the rest of a slow pipe
                break
            session.feed(chunk)
        session.finish()
        session.close()
    except KeyboardInterrupt:  # stop the sound now; the WAV keeps what was already spoken, the JSON says so
        session.abort()
        session.close()
        if json_output:
            out_json({**_report(engine, voice_name, output, out, session), "interrupted": True})
        raise
    if session.error:
        raise LocalaiError(f"speech failed: {session.error}",
                           "run with --debug" + (", or try --tts fallback" if engine.name != "fallback" else ""))
    output.raise_if_lost()
    seconds = output.seconds
    if not session.timings:
        warn("nothing to speak")
    elif not seconds:  # text to speak, and not a sample of audio for it
        raise LocalaiError(f"{engine.label} gave no audio for this text",
                           "it may not speak its language or script: see --list-voices, and --lang")
    info(f"spoke {len(session.timings)} sentence(s), {seconds:.1f} s of audio"
         + (f" -> {shown(out)}" if out else "") + f" [{engine.name}, voice {voice_name}]")
    if json_output:
        out_json(_report(engine, voice_name, output, out, session))


def _report(engine, voice_name: str, output, out: Optional[Path], session) -> dict:
    return {"engine": engine.name, "voice": voice_name, "sample_rate": engine.sample_rate,
            "audio_s": round(output.seconds, 3), "out": str(out) if out else None, "sentences": session.timings}
