"""The interactive chat loop: read a line, stream the answer, keep the history.

Streamed text goes to stdout and to every extra sink in `tee` (an object with
feed(text_delta), finish() and abort(), e.g. a speech session). Ctrl-C during an answer
stops that answer (sinks are aborted) and the session goes on; at the prompt it aborts the
sinks too (an answer still being spoken falls silent). Ctrl-D or /exit ends the session.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from localai.console import out
from localai.engine.conversation import Conversation
from localai.engine.inputs import utf8_text
from localai.engine.request import Request, SamplingParams
from localai.errors import LocalaiError

HELP = """commands:
  /reset         forget the conversation (keeps the system message)
  /system TEXT   set the system message (/system alone shows it)
  /save FILE     save the conversation as JSON
  /load FILE     load a saved conversation
  /exit          leave (or Ctrl-D); Ctrl-C stops the current answer
  /help          this list"""


class ChatRepl:
    def __init__(self, engine, conversation: Conversation, params: SamplingParams, plan, *,
                 tee: list | None = None, history_file: Path | None = None,
                 notice: Callable[[str], None] = print, write: Callable[[str], None] | None = None,
                 prompt_write: Callable[[str], None] | None = None):
        self.engine = engine
        self.conversation = conversation
        self.params = params
        self.plan = plan
        self.tee = list(tee or [])
        self.history_file = history_file
        self.notice = notice
        self.write = write or _stdout_write
        self.prompt_write = prompt_write or _prompt_stream_write  # the line end after Ctrl-D or Ctrl-C at "> "
        self.turns = 0
        self.interrupted = False  # the last answer was stopped by Ctrl-C

    # --- one answer --------------------------------------------------------------------
    def answer(self, text: str) -> str:
        """Add the user's text, stream the assistant's answer, and return it."""
        self.conversation.add("user", utf8_text(text, "the message"))
        budget = self.plan.max_ctx - self.params.max_new_tokens
        try:
            ids, dropped = self.conversation.fit(self.engine.tokenizer, budget)
        except LocalaiError:
            self.conversation.messages.pop()
            raise
        if dropped:
            self.notice(f"(dropped the {dropped} oldest messages to fit the {self.plan.max_ctx}-token context)")
        params = replace(self.params, seed=None if self.params.seed is None else self.params.seed + self.turns)
        self.turns += 1
        request = Request(prompt_ids=ids, params=params, id=self.turns, prompt=text)
        pieces: list[str] = []
        self.interrupted = reader_left = False
        try:
            for event in self.engine.stream([request], plan=self.plan):
                if event.text:
                    pieces.append(event.text)
                    self._emit(event.text)
            for sink in self.tee:
                sink.finish()
            self.write("\n")
        except KeyboardInterrupt:
            for sink in self.tee:
                sink.abort()
            self.write("\n")
            self.notice("(stopped)")
            self.interrupted = True
        except Exception as exc:  # the answer failed: its unfinished sentence must not start the next answer
            reader_left = isinstance(exc, BrokenPipeError)  # `chat | head`: the command stops quietly next
            for sink in self.tee:
                sink.abort()
            raise
        finally:
            self.conversation.add("assistant", "".join(pieces))
            if reader_left:  # the turn is kept, as after Ctrl-C
                self._autosave()
        self._autosave()
        return "".join(pieces)

    def _emit(self, text: str) -> None:
        self.write(text)
        for sink in self.tee:
            sink.feed(text)

    def _autosave(self) -> None:
        if self.history_file is not None:
            self.conversation.save(self.history_file, "--history")

    # --- commands ----------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False means leave the loop."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name in ("exit", "quit"):
            return False
        if name == "help":
            self.notice(HELP)
        elif name == "reset":
            self.conversation.reset()
            self._autosave()
            self.notice("(conversation cleared)")
        elif name == "system":
            if argument:
                self.conversation.system = argument
                self._autosave()
                self.notice("(system message set)")
            else:
                self.notice(f"system: {self.conversation.system or '(none)'}")
        elif name in ("save", "load"):
            if not argument:
                raise LocalaiError(f"/{name} needs a file name", f"e.g. /{name} chat.json")
            if name == "save":
                self.conversation.save(argument)
                self.notice(f"(saved {len(self.conversation.messages)} messages to {argument})")
            else:
                loaded = Conversation.load(argument)
                self.conversation.system, self.conversation.messages = loaded.system, loaded.messages
                self._autosave()
                self.notice(f"(loaded {len(loaded.messages)} messages from {argument})")
        else:
            raise LocalaiError(f"unknown command /{name}", "type /help for the list")
        return True

    # --- the loop ----------------------------------------------------------------------
    def run(self, read_line: Callable[[str], str] | None = None) -> None:
        """Interactive loop until /exit or end of input; errors of one turn are shown and the loop goes on."""
        self.notice("type /help for commands, Ctrl-D to leave")
        read_line = read_line or read_prompted_line
        while True:
            try:
                line = read_line("> ").strip()
            except EOFError:
                self.prompt_write("\n")
                return
            except KeyboardInterrupt:  # a fresh prompt; an answer still being spoken stops
                for sink in self.tee:
                    sink.abort()
                self.prompt_write("\n")
                continue
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not self.command(line):
                        return
                else:
                    self.answer(line)
            except LocalaiError as exc:
                self.notice(f"error: {exc.one_line()}")
            except KeyboardInterrupt:  # Ctrl-C just outside the answer's own handling
                self.write("\n")


def _stdout_write(text: str) -> None:
    out(text, end="")


def prompt_stream():
    """Where the "> " prompt goes: stdout in a terminal, stderr when stdout is a pipe or a file
    (`chat | tee answers.txt`), which then carries the answers only."""
    return sys.stdout if sys.stdout.isatty() else sys.stderr


def _prompt_stream_write(text: str) -> None:
    stream = prompt_stream()
    stream.write(text)
    stream.flush()


def read_prompted_line(prompt: str) -> str:
    """input(prompt), with the prompt on prompt_stream()."""
    if prompt_stream() is sys.stdout:
        return input(prompt)  # readline draws the prompt, and draws it again while the line is edited
    _prompt_stream_write(prompt)
    return input()


def enable_line_editing(history_path: Path) -> Callable[[], None]:
    """Turn on readline editing and history for input(); returns a function that saves the history."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input() still works
        return lambda: None
    try:
        readline.read_history_file(history_path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            history_path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history_path)
        except OSError:
            pass

    return save
