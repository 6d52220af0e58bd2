"""Helpers for tests that run `localai` (in a fresh process or in this one) and read its one-line errors."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`localai ARGS` in a fresh process: huggingface-hub reads HF_ENDPOINT/HF_HUB_OFFLINE at import."""
    return subprocess.run([sys.executable, "-m", "localai", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)


def invoke_on_cpu(*args):
    """`localai --device cpu ARGS` in this process through typer's CliRunner; paths and numbers are str()'d."""
    from typer.testing import CliRunner

    from localai.cli import app

    return CliRunner().invoke(app, ["--device", "cpu", *[str(a) for a in args]])


def online_env(tmp_path: Path, endpoint: str) -> dict:
    env = dict(os.environ, HF_ENDPOINT=endpoint, LOCALAI_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    return env


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Terminal:
    """`localai ARGS` in a fresh process on a pseudo-terminal: what a person at a keyboard sees and does.
    As a context manager it kills the process at the end if it is still running (a failed test)."""

    def __init__(self, args, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become `localai`
            os.execve(sys.executable, [sys.executable, "-m", "localai", *args], env)
        self.seen, self.cursor = b"", 0

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):  # still running
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
        except ChildProcessError:  # wait() has reaped it
            pass
        os.close(self.fd)

    def read_until(self, marker: bytes, timeout: float = 120) -> bytes:
        """Output from after the previous match up to and including `marker`."""
        deadline = time.time() + timeout
        while marker not in self.seen[self.cursor:] and time.time() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.seen += chunk
        found = self.seen.find(marker, self.cursor)
        assert found >= 0, self.seen[self.cursor:].decode(errors="replace")
        piece, self.cursor = self.seen[self.cursor:found + len(marker)], found + len(marker)
        return piece

    def read_some(self, timeout: float = 60) -> bytes:
        """Wait for any new output."""
        deadline = time.time() + timeout
        while len(self.seen) == self.cursor and time.time() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                self.seen += os.read(self.fd, 4096)
        assert len(self.seen) > self.cursor, "no output"
        piece, self.cursor = self.seen[self.cursor:], len(self.seen)
        return piece

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def press_ctrl_c(self) -> None:
        # CPython's readline checks for signals only when its wait for input is interrupted, so a
        # Ctrl-C that lands in the microseconds between drawing the prompt and starting that wait
        # is seen at the next key press. People cannot hit that window; a test reacting to the
        # prompt can, so it pauses first like a person would.
        time.sleep(0.5)
        self.send(b"\x03")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.1)  # drain its output, never waiting on it
            if ready:
                try:
                    os.read(self.fd, 4096)
                except OSError:
                    pass
        os.kill(self.pid, 9)
        raise AssertionError("localai did not exit")
