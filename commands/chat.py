"""Chat with a model: streamed answers, history, /commands; piped stdin is answered once."""

from __future__ import annotations

import sys
from typing import Optional

import typer


def main(
    model: str = typer.Argument(..., help="Alias, hub repo id, model folder or .gguf file."),
    system: Optional[str] = typer.Option(None, "--system", help="System message."),
    history: Optional[str] = typer.Option(None, "--history", help="Conversation file: loaded if it exists, "
                                          "saved after every turn."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="0 = greedy; higher = more random."),
    top_p: float = typer.Option(0.95, "--top-p", help="Sample from the smallest set with this much probability."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the K most likely tokens (0 = all)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed, for reproducible answers."),
    context: int = typer.Option(4096, "--context", min=2,
                                help="Context length in tokens (capped by the model and memory)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    speak: bool = typer.Option(False, "--speak", help="Speak the answers aloud, sentence by sentence (see `speak`)."),
    voice: Optional[str] = typer.Option(None, "--voice", help="With --speak: the voice (see speak --list-voices)."),
    speak_out: Optional[str] = typer.Option(None, "--speak-out", help="With --speak: write the speech to this WAV "
                                            "file (or named pipe) instead of playing it."),
) -> None:
    """Chat with a model: streamed answers, history, /commands; piped stdin is answered once."""
    from pathlib import Path

    from localai.engine.conversation import Conversation
    from localai.engine.inputs import stdin_lines, utf8_text
    from localai.engine.request import Request, SamplingParams
    from localai.errors import UsageError

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed).validate(UsageError)
    from localai.loading import check_dtype_name

    check_dtype_name(dtype, UsageError)
    if voice and not (speak or speak_out):
        raise UsageError("--voice applies to spoken answers", "add --speak (or --speak-out FILE.wav)")
    _check_output_files(history, speak_out)
    interactive = sys.stdin.isatty()
    piped = None if interactive else utf8_text("".join(stdin_lines(sys.stdin)).strip(), "<stdin>")
    if piped == "":
        raise UsageError("nothing to answer on stdin", "pipe a message in, or run in a terminal to chat")
    conversation = Conversation(system=system)
    history_file = Path(history).expanduser() if history else None
    if history_file is not None and history_file.exists() and history_file.stat().st_size:
        # an empty file (`--history "$(mktemp)"`, `touch chat.json`) starts a new conversation
        conversation = Conversation.load(history, "--history")
        conversation.system = system or conversation.system

    from localai.console import info, note
    from localai.engine.api import Engine
    from localai.engine.repl import ChatRepl, enable_line_editing
    from localai.settings import localai_home

    _check_room(max_new_tokens, context, "lower --max-new-tokens, or raise --context")  # as given; checked
    # again against the model's and memory's limits, which a larger --context does not move
    info(f"loading {model}...")
    engine = Engine.load(model, dtype=dtype, notice=info)
    if not getattr(engine.tokenizer, "chat_template", None):
        from localai.errors import LocalaiError

        raise LocalaiError(f"{model} has no chat template, so it cannot hold a conversation",
                           "for plain text completion use `localai generate MODEL --raw PROMPT`")
    # memory may shorten the context further: checked again with the plan
    _check_room(max_new_tokens, min(context, engine.shape.max_positions))
    speech = None
    if speak or speak_out:  # before the memory plan: what the speech model takes is not there for the cache
        from localai.tts.session import start_speech

        speech = start_speech(voice=voice, out_path=Path(speak_out) if speak_out else None, play=speak_out is None)
    try:
        plan = engine.plan_for([Request([0])], batch_size=1, max_ctx=context)
        _check_room(max_new_tokens, plan.max_ctx)
        repl = ChatRepl(engine, conversation, params, plan, history_file=history_file,
                        notice=note, tee=[speech] if speech else None)
        if piped is not None:
            repl.answer(piped)
            if repl.interrupted:  # the one answer asked for was cut short: not a success
                raise typer.Exit(130)
            return
        save_line_history = enable_line_editing(localai_home() / "chat_history")
        try:
            repl.run()
        finally:
            save_line_history()
    finally:
        if speech is not None:
            speech.close()  # waits for the last sentence, finishes the WAV


def _check_output_files(history: Optional[str], speak_out: Optional[str]) -> None:
    """--history and --speak-out, refused before the model loads, not after; stdout carries the answers."""
    from localai.engine.conversation import CHAT_NAME_EXAMPLE
    from localai.errors import UsageError
    from localai.outfile import STDOUT, check_output_path
    from localai.tts.wavfile import WAV_NAME_EXAMPLE, check_wav_path

    outputs = (("--history", history, CHAT_NAME_EXAMPLE), ("--speak-out", speak_out, WAV_NAME_EXAMPLE))
    for flag, path, example in outputs:
        if path == STDOUT:
            raise UsageError(f"{flag} - would mix into the answers on stdout", f"name a file, e.g. {flag} {example}")
    if history:
        check_output_path(history, "--history", CHAT_NAME_EXAMPLE)
    if speak_out:
        check_wav_path(speak_out, "--speak-out")


def _check_room(max_new_tokens: int, context: int, hint: str = "lower --max-new-tokens") -> None:
    from localai.errors import UsageError

    if context <= max_new_tokens:
        raise UsageError(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in a "
                         f"{context}-token context", hint)
