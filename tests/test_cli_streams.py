"""Signals and the standard streams: Ctrl-C and Ctrl-Break, a reader of stdout that left (Windows'
EINVAL included), closed streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import REPO_ROOT
from hub_server import HubServer


WITH_CTRL_BREAK = """
import signal
signal.SIGBREAK = signal.SIGUSR1
from localai.cli import main
main()
"""


@pytest.mark.parametrize("launcher, key", [(["-m", "localai"], signal.SIGINT),
                                           (["-c", WITH_CTRL_BREAK], signal.SIGUSR1)], ids=["ctrl-c", "ctrl-break"])
def test_ctrl_c_or_ctrl_break_exits_130(tmp_path, launcher, key):
    with HubServer({}, delay_s=60) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, LOCALAI_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"))
        env.pop("HF_HUB_OFFLINE", None)
        process = subprocess.Popen([sys.executable, *launcher, "download", "acme/slow"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        deadline = time.monotonic() + 60
        while not hub.requests and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(key)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stdout == "" and "interrupted" in stderr


# `localai` writing its stdout as on Windows
ON_A_WINDOWS_PIPE = """
import io, sys
sys.path.insert(0, "tests")
from fake_windows import WindowsPipe, WindowsSys
from localai import cli, console
console.sys = WindowsSys()
sys.stdout = io.TextIOWrapper(io.BufferedWriter(WindowsPipe(1, "w", closefd=False)))
cli.main()
"""


@pytest.mark.parametrize("windows", [False, True], ids=["posix", "windows"])
@pytest.mark.parametrize("args, code", [(["list", "--aliases"], 0), (["--help"], 1), (["--version"], 1)],
                         ids=["command", "help", "version"])
def test_a_reader_that_left_stops_the_command_quietly(tmp_path, windows, args, code):
    """`localai list --aliases | head -1`: exit 0 and nothing on stderr, not even the "Exception ignored"
    of the interpreter's last flush of stdout. Windows reports the closed pipe as EINVAL. --help and
    --version stop as click stops them (exit 1), quietly on Windows too."""
    launcher = ["-c", ON_A_WINDOWS_PIPE] if windows else ["-m", "localai"]
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first line
    try:
        done = subprocess.run([sys.executable, *launcher, *args], stdout=writer,
                              stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=60,
                              env=dict(os.environ, LOCALAI_HOME=str(tmp_path)))
    finally:
        os.close(writer)
    assert done.returncode == code and done.stderr == ""


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_only_on_windows_is_einval_from_stdout_a_reader_that_left(monkeypatch, platform):
    """EINVAL has other meanings (on Windows, a file name with a '?'); it stops quietly only where it
    comes from a write to stdout on Windows."""
    import io

    from fake_windows import pipe_whose_reader_left

    from localai.console import is_closed_pipe, out

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(pipe_whose_reader_left()))
    with pytest.raises(OSError) as failed:
        out("text")
    assert isinstance(failed.value, BrokenPipeError) == (platform == "win32")
    assert is_closed_pipe(BrokenPipeError()) and not is_closed_pipe(OSError(28, "No space left on device"))
    assert not is_closed_pipe(KeyboardInterrupt())


def test_ctrl_break_raises_keyboard_interrupt_where_windows_has_it(monkeypatch):
    """Installed from the main thread only (signal.signal refuses any other), and only where
    signal.SIGBREAK exists; SIGUSR1 stands in for it."""
    import threading

    from localai.cli import stop_on_ctrl_break

    def from_another_thread():
        try:
            stop_on_ctrl_break()
        except ValueError as exc:  # "signal only works in main thread of the main interpreter"
            refused.append(exc)

    before = signal.getsignal(signal.SIGUSR1)
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    try:
        refused = []
        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join()
        assert refused == [] and signal.getsignal(signal.SIGUSR1) is before
        stop_on_ctrl_break()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    monkeypatch.delattr(signal, "SIGBREAK")
    stop_on_ctrl_break()  # Linux, macOS: nothing to install
    assert signal.getsignal(signal.SIGUSR1) is before


def test_ctrl_c_that_lands_in_a_weakref_callback_is_not_dropped(monkeypatch):
    import weakref

    from localai.cli import _ctrl_c_kept

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", _ctrl_c_kept(dropped.append))

    def interrupted(_ref):
        raise KeyboardInterrupt  # where Python reports an exception as unraisable and goes on

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, interrupted)
    with pytest.raises(KeyboardInterrupt):
        del thing
        for _ in range(500):  # delivered from another thread, so give it the interpreter
            time.sleep(0.01)
    assert dropped == [] and ref() is None


# --- generate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, message", [("generate", "no prompts given"),
                                              ("chat", "nothing to answer on stdin")])
def test_a_closed_stdin_reads_as_empty(tmp_path, command, message):
    script = f'exec <&-; exec "$0" -m localai --device cpu {command} "{tmp_path / "absent"}"'
    done = subprocess.run(["bash", "-c", script, sys.executable], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_a_closed_output_stream_drops_what_goes_there(tmp_path, closed):
    """`localai ... >&-` or `2>&-`: no AttributeError from the missing stream; the other one still works."""
    redirect = ">&-" if closed == "stdout" else "2>&-"
    script = f'exec {redirect}; exec "$0" -m localai list --aliases'
    done = subprocess.run(["bash", "-c", script, sys.executable], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60, env=dict(os.environ, LOCALAI_HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and ("" if closed == "stdout" else "voxtral-tts") in done.stdout
    failing = subprocess.run(["bash", "-c", f'exec {redirect}; exec "$0" -m localai where nothing-here',
                              sys.executable], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                             env=dict(os.environ, LOCALAI_HOME=str(tmp_path)))
    assert failing.returncode == 1 and "Traceback" not in failing.stderr


@pytest.mark.parametrize("last_word", ["fail", "interrupted"])
def test_a_last_word_reaches_stderr_when_the_reader_of_stdout_left(monkeypatch, capsys, last_word):
    """An error (or Ctrl-C) after the reader of stdout left, with text still buffered for it: the
    one-line message and exit code stand, and stdout's rest goes to the null device instead of a
    traceback from the flush."""
    import typer

    from localai import cli

    class LeftPipe:
        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    silenced = []
    monkeypatch.setattr(cli, "_silence_stdout", lambda: silenced.append(True))
    monkeypatch.setattr(sys, "stdout", LeftPipe())
    with pytest.raises(typer.Exit) as stopped:
        cli._fail("boom", 1) if last_word == "fail" else cli._interrupted()
    assert stopped.value.exit_code == (1 if last_word == "fail" else 130)
    assert capsys.readouterr().err.strip() == ("error: boom" if last_word == "fail" else "interrupted")
    assert silenced == [True]


def test_speak_refuses_to_write_a_wav_to_a_terminal(localai_home):
    """`localai speak --out - Hello` typed at a terminal: the WAV's bytes would garble the screen."""
    import pty

    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "localai", "speak", "--tts", "fallback", "--out", "-", "Hello."],
                              stdout=terminal, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              timeout=60, cwd=REPO_ROOT)
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 2, done.stderr
    assert "error: --out - would write the WAV's bytes to the terminal" in done.stderr
