"""`localai chat`: through a pipe, through a pseudo-terminal, and the REPL's commands and history."""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import Terminal
from typer.testing import CliRunner

from localai.cli import app
from localai.engine.conversation import Conversation
from localai.engine.request import SamplingParams
from localai.errors import LocalaiError

runner = CliRunner()


@pytest.fixture(autouse=True)
def global_state_restored(monkeypatch):
    from localai.settings import settings

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in ("device", "verbosity", "offline", "debug"):
        monkeypatch.setattr(settings, name, getattr(settings, name))


def chat(*args, input=None):
    return runner.invoke(app, ["--device", "cpu", "chat", *map(str, args)], input=input)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from localai.engine.api import Engine
    from localai.loading import load_model, load_tokenizer

    return Engine(load_model(tiny_llama, device="cpu"), load_tokenizer(tiny_llama))


def greedy_answer(engine, messages, new_tokens):
    from localai.engine.api import generate_batch

    request = engine.request(messages=messages, params=SamplingParams(max_new_tokens=new_tokens))
    return generate_batch(engine, [request])[0].text


# --- through a pipe ---------------------------------------------------------------------------


def test_piped_message_is_answered_once_on_stdout(tiny_llama, engine, localai_home):
    result = chat(tiny_llama, "--temperature", 0, "--max-new-tokens", 8, "--system", "Be brief.", input="Hello\n")
    assert result.exit_code == 0, result.stderr
    expected = greedy_answer(engine, [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hello"}], 8)
    assert result.stdout == expected + "\n"
    assert "> " not in result.stdout


def test_history_file_carries_the_conversation_across_runs(tiny_llama, engine, tmp_path, localai_home):
    history = tmp_path / "talk.json"
    first = chat(tiny_llama, "--temperature", 0, "--max-new-tokens", 6, "--history", history, input="Hello\n")
    assert first.exit_code == 0, first.stderr
    saved = json.loads(history.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    second = chat(tiny_llama, "--temperature", 0, "--max-new-tokens", 6, "--history", history, input="Again\n")
    assert second.exit_code == 0, second.stderr
    messages = saved["messages"] + [{"role": "user", "content": "Again"}]
    assert second.stdout == greedy_answer(engine, messages, 6) + "\n"
    assert len(json.loads(history.read_text())["messages"]) == 4
    assert not list(tmp_path.glob(".*tmp"))


def test_an_empty_history_file_starts_a_new_conversation(tiny_llama, engine, tmp_path, localai_home):
    history = tmp_path / "talk.json"
    history.touch()  # as `--history "$(mktemp)"` gives it
    result = chat(tiny_llama, "--temperature", 0, "--max-new-tokens", 6, "--history", history, input="Hello\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == greedy_answer(engine, [{"role": "user", "content": "Hello"}], 6) + "\n"
    assert [m["role"] for m in json.loads(history.read_text())["messages"]] == ["user", "assistant"]


def test_ctrl_c_during_a_piped_answer_exits_130_and_keeps_the_partial_answer(tiny_llama, tmp_path, localai_home,
                                                                             monkeypatch):
    from localai.engine.api import Engine

    real_stream = Engine.stream

    def stream_then_ctrl_c(self, *args, **kwargs):
        for i, event in enumerate(real_stream(self, *args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield event

    monkeypatch.setattr(Engine, "stream", stream_then_ctrl_c)
    history = tmp_path / "talk.json"
    result = chat(tiny_llama, "--temperature", 0, "--max-new-tokens", 20, "--history", history, input="Hello\n")
    assert result.exit_code == 130
    assert result.stdout.strip()  # what was generated before Ctrl-C
    assert json.loads(history.read_text())["messages"][-1]["content"].strip() == result.stdout.strip()


def test_empty_pipe_is_a_usage_error(tiny_llama, localai_home):
    result = chat(tiny_llama, input="")
    assert result.exit_code == 2 and result.stdout == ""
    assert "nothing to answer on stdin" in result.stderr


def test_a_message_that_is_not_utf8_is_refused_in_one_line(tiny_llama, engine, localai_home):
    result = chat(tiny_llama, input=b"caf\xe9\n")
    assert result.exit_code == 1 and result.stdout == ""
    assert "<stdin> is not UTF-8 text" in result.stderr and "loading" not in result.stderr
    repl, _, _ = make_repl(engine)
    with pytest.raises(LocalaiError, match="the message is not UTF-8 text"):
        repl.answer(b"caf\xe9".decode("utf-8", "surrogateescape"))
    assert repl.conversation.messages == []


def test_a_model_without_a_chat_template_is_refused_with_a_hint(tiny_llama, tmp_path, localai_home):
    import json
    import shutil

    plain = shutil.copytree(tiny_llama, tmp_path / "no-template")
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    for template in plain.glob("chat_template.*"):
        template.unlink()
    result = chat(plain, input="Hi\n")
    assert result.exit_code == 1 and result.stdout == ""
    assert "has no chat template" in result.stderr and "localai generate MODEL --raw" in result.stderr


def test_too_many_new_tokens_for_the_context_is_a_usage_error(tiny_llama, localai_home):
    result = chat(tiny_llama, "--context", 64, "--max-new-tokens", 100, input="Hi\n")
    assert result.exit_code == 2 and "Lower --max-new-tokens" in result.stderr


# --- the REPL in process ------------------------------------------------------------------------


class RecordingSink:
    """A tee target (the shape a speech session has); interrupts like Ctrl-C after `stop_after` pieces."""

    def __init__(self, stop_after=None):
        self.pieces, self.finished, self.aborted, self.stop_after = [], 0, 0, stop_after

    def feed(self, text):
        self.pieces.append(text)
        if self.stop_after is not None and len(self.pieces) >= self.stop_after:
            raise KeyboardInterrupt

    def finish(self):
        self.finished += 1

    def abort(self):
        self.aborted += 1


def make_repl(engine, max_ctx=256, new_tokens=8, sink=None):
    from localai.engine.repl import ChatRepl
    from localai.engine.request import Request

    plan = engine.plan_for([Request([0])], batch_size=1, max_ctx=max_ctx)
    notices, written = [], []
    repl = ChatRepl(engine, Conversation(), SamplingParams(max_new_tokens=new_tokens), plan,
                    tee=[sink] if sink else [], notice=notices.append, write=written.append)
    return repl, notices, written


def test_answers_are_teed_to_extra_sinks(engine):
    sink = RecordingSink()
    repl, _, written = make_repl(engine, sink=sink)
    reply = repl.answer("Hello")
    assert "".join(sink.pieces) == reply and sink.finished == 1 and sink.aborted == 0
    assert "".join(written) == reply + "\n"
    assert repl.conversation.messages[-1] == {"role": "assistant", "content": reply}


def test_ctrl_c_stops_the_answer_but_not_the_session(engine):
    sink = RecordingSink(stop_after=2)
    repl, notices, _ = make_repl(engine, new_tokens=40, sink=sink)
    lines = iter(["Hello", "/help", "/exit"])
    repl.run(lambda prompt: next(lines))
    assert sink.aborted == 1 and sink.finished == 0
    assert "(stopped)" in notices and any("/reset" in n for n in notices)
    assert len(repl.conversation.messages) == 2  # the partial answer stays in the history


def test_a_reader_of_the_answers_that_left_keeps_the_turn_in_the_history(engine, tmp_path):
    """`echo Hi | chat --history h.json | head -c 20`: the pipe closes mid-answer; the command stops
    quietly, and the history holds the question and the answer so far, as after Ctrl-C."""
    from localai.engine.conversation import Conversation as Saved

    repl, _, written = make_repl(engine, new_tokens=40)
    repl.history_file = tmp_path / "h.json"

    def write_until_the_reader_leaves(text):
        if len(written) == 3:
            raise BrokenPipeError
        written.append(text)

    repl.write = write_until_the_reader_leaves
    with pytest.raises(BrokenPipeError):
        repl.answer("Hello")
    saved = Saved.load(tmp_path / "h.json").messages
    assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"].startswith("".join(written))


def test_an_answer_that_fails_midway_leaves_nothing_in_the_sinks_for_the_next(engine, monkeypatch):
    sink = RecordingSink()
    repl, notices, _ = make_repl(engine, new_tokens=20, sink=sink)
    real_stream = type(engine).stream

    def stream_then_fail(self, *args, **kwargs):
        for i, event in enumerate(real_stream(self, *args, **kwargs)):
            if i == 2:
                raise LocalaiError("out of memory")
            yield event

    monkeypatch.setattr(type(engine), "stream", stream_then_fail)
    lines = iter(["Hello", "/exit"])
    repl.run(lambda prompt: next(lines))
    assert any("out of memory" in n for n in notices)
    assert sink.aborted == 1 and sink.finished == 0


def test_ctrl_c_at_the_prompt_stops_the_speech_of_the_last_answer(engine):
    sink = RecordingSink()
    repl, _, _ = make_repl(engine, sink=sink)

    def read_line(prompt, lines=iter(["Hello", None, "/exit"])):
        line = next(lines)
        if line is None:
            raise KeyboardInterrupt  # while the answer is still being spoken
        return line

    repl.run(read_line)
    assert sink.finished == 1 and sink.aborted == 1


def test_commands_reset_system_save_load(engine, tmp_path):
    repl, notices, _ = make_repl(engine)
    repl.answer("Hello")
    saved = tmp_path / "chat.json"
    lines = iter(["/system Be brief.", "/system", f"/save {saved}", "/reset", f"/load {saved}", "/bogus",
                  "/load", ""])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    repl.run(read)
    assert "system: Be brief." in notices
    assert json.loads(saved.read_text())["system"] == "Be brief."
    assert "(conversation cleared)" in notices and any(n.startswith("(loaded 2 messages") for n in notices)
    assert any("unknown command /bogus" in n for n in notices) and any("/load needs a file name" in n for n in notices)
    assert len(repl.conversation.messages) == 2 and repl.conversation.system == "Be brief."


def test_a_file_that_cannot_be_written_is_an_error_and_the_session_goes_on(engine, tmp_path):
    repl, notices, _ = make_repl(engine)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    lines = iter([f"/save {tmp_path}", f"/save {blocker / 'chat.json'}", "/system still here", "/exit"])
    repl.run(lambda prompt: next(lines))
    errors = [n for n in notices if n.startswith("error: cannot write")]
    assert len(errors) == 2 and "(system message set)" in notices
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no temporary file left behind


def test_old_turns_are_dropped_to_fit_the_context_and_the_user_is_told(engine):
    repl, notices, _ = make_repl(engine, max_ctx=64, new_tokens=8)
    for text in ["Hello there, how are you?", "Tell me about Paris.", "And Rome?"]:
        repl.answer(text)
    assert any(n.startswith("(dropped the 2 oldest messages") for n in notices)
    assert repl.conversation.messages[0]["role"] == "user"
    with pytest.raises(LocalaiError, match="fit in the context"):
        repl.answer("word " * 200)
    assert repl.conversation.messages[-1]["role"] == "assistant"  # the refused message is not kept


def test_a_file_that_is_not_a_conversation_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(LocalaiError, match="not a saved conversation"):
        Conversation.load(bad)


# --- through a pseudo-terminal -----------------------------------------------------------------


def test_chat_in_a_terminal_streams_keeps_going_after_ctrl_c_and_exits(tiny_llama, tmp_path):
    env = dict(os.environ, LOCALAI_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TERM="dumb")
    args = ["--device", "cpu", "chat", str(tiny_llama), "--temperature", "0", "--max-new-tokens", "300",
            "--context", "512"]
    with Terminal(args, env) as term:
        term.read_until(b"> ")
        term.send(b"Hello\n")
        answer = term.read_until(b"\n> ")
        assert answer.startswith(b"Hello\r\n") and len(answer) > len(b"Hello\r\n\r\n> ")
        saved = tmp_path / "saved.json"
        term.send(f"/save {saved}\n".encode())
        term.read_until(b"(saved 2 messages")
        term.read_until(b"> ")
        term.press_ctrl_c()  # at the prompt: a fresh prompt, not an exit
        term.read_until(b"> ")
        term.send(b"Tell me more\n")
        term.read_until(b"Tell me more\r\n")
        term.read_some()
        term.send(b"\x03")  # while the answer streams: it stops there
        term.read_until(b"> ")
        term.send(b"/help\n")
        term.read_until(b"/reset")
        term.read_until(b"> ")
        term.send(b"/exit\n")
        assert term.wait() == 0
    assert len(json.loads(saved.read_text())["messages"]) == 2
    assert "Hello" in (tmp_path / "home" / "chat_history").read_text()  # readline history was kept


def test_an_unknown_dtype_is_a_usage_error_before_loading(tmp_path, localai_home):
    result = runner.invoke(app, ["chat", str(tmp_path / "absent"), "--dtype", "int3"], input="Hi\n")
    assert result.exit_code == 2 and "unknown dtype 'int3'" in result.stderr



def test_output_files_are_checked_before_loading(tmp_path, localai_home):
    absent = str(tmp_path / "absent")  # loading it would fail: these errors must come first
    missing = tmp_path / "missing" / "talk.json"
    result = runner.invoke(app, ["chat", absent, "--history", str(missing)], input="Hi\n")
    assert result.exit_code == 1
    assert f"cannot write {missing}: the folder {missing.parent} does not exist" in result.stderr
    for flag in ("--history", "--speak-out"):  # stdout carries the answers
        result = runner.invoke(app, ["chat", absent, flag, "-"], input="Hi\n")
        assert result.exit_code == 2 and f"{flag} - would mix into the answers on stdout" in result.stderr
    assert not missing.parent.exists()


def test_with_stdout_redirected_the_prompt_goes_to_the_terminal_and_stdout_holds_the_answers(tiny_llama, tmp_path):
    import pty
    import select
    import subprocess
    import sys
    import time

    env = dict(os.environ, LOCALAI_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TERM="dumb")
    controller, terminal = pty.openpty()  # stdin and stderr on a terminal, stdout to a pipe: `chat | tee log`
    process = subprocess.Popen([sys.executable, "-m", "localai", "--device", "cpu", "chat", str(tiny_llama),
                                "--temperature", "0", "--max-new-tokens", "6"],
                               stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, env=env)
    os.close(terminal)
    seen = b""

    def prompts_on_the_terminal(count):
        nonlocal seen
        deadline = time.time() + 60
        while seen.count(b"> ") < count and time.time() < deadline and process.poll() is None:
            if select.select([controller], [], [], 0.2)[0]:
                seen += os.read(controller, 4096)
        return seen.count(b"> ") >= count

    assert prompts_on_the_terminal(1), seen
    os.write(controller, b"Hello\n")
    assert prompts_on_the_terminal(2), seen
    os.write(controller, b"\x04")
    stdout, _ = process.communicate(timeout=60)
    os.close(controller)
    assert process.returncode == 0
    assert b"> " not in stdout and stdout.endswith(b"\n") and stdout.count(b"\n") == 1, stdout
