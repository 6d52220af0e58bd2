"""Helpers for tests that run `localai` (in a fresh process or in this one) and read its one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
