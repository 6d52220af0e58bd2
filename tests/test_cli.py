"""The CLI contract: help, version, global options, exit codes, stdout vs stderr, JSON output,
and the first `generate` command on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localai.cli import COMMANDS, app
from localai.settings import settings

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_settings(monkeypatch):
    """Global options write into `settings` and the environment; give each test a clean slate."""
    for field in ("verbosity", "debug", "offline", "device"):
        monkeypatch.setattr(settings, field, getattr(settings, field))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_help_lists_every_command_with_a_description():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("download", "list", "rm", "where", "doctor", "generate"):
        assert name in COMMANDS
    for name in COMMANDS:
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split()) > 1, f"{name} has no description"


def test_no_args_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.stdout + result.stderr
    assert result.exit_code in (0, 2)


def test_help_imports_neither_torch_nor_transformers():
    script = (
        "import runpy, sys\n"
        "sys.argv = ['localai', '--help']\n"
        "try:\n    runpy.run_module('localai', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'huggingface_hub', 'sounddevice', 'numpy')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="


def test_every_command_has_help():
    for name in COMMANDS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage" in result.stdout


def test_version():
    from localai import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"localai {__version__}\n"


@pytest.mark.parametrize("args", [["no-such-command"], ["list", "--bogus"], ["--device", "tpu", "list"],
                                  ["generate"], ["generate", "m", "hi", "--max-new-tokens", "0"]])
def test_usage_errors_exit_2(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


def test_user_error_is_one_line_on_stderr_and_exit_1(localai_home):
    result = runner.invoke(app, ["where", "no-such-model"])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'no-such-model'")


def test_debug_shows_the_traceback(localai_home):
    result = runner.invoke(app, ["--debug", "where", "no-such-model"])
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_quiet_silences_stderr_notes(localai_home):
    loud = runner.invoke(app, ["list"])
    assert "no models yet" in loud.stderr
    quiet = runner.invoke(app, ["-q", "list"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""



def test_python_warnings_are_one_line_and_quiet_silences_them(localai_home, monkeypatch):
    """A library's warning (e.g. the CPU kernel falling back to torch) reads as the tool's own warnings do."""
    import warnings

    from localai.store import listing

    def listed_with_a_warning():
        warnings.warn("the native CPU kernel is unavailable, using the slower torch path")
        return []

    monkeypatch.setattr(listing, "list_models", listed_with_a_warning)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        loud, quiet, detailed = (runner.invoke(app, [*flags, "list"]) for flags in ([], ["-q"], ["-v"]))
    assert loud.stderr.splitlines()[0] == "warning: the native CPU kernel is unavailable, using the slower torch path"
    assert "UserWarning" not in loud.stderr
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "(UserWarning, " in detailed.stderr

def test_offline_sets_hf_hub_offline(localai_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = runner.invoke(app, ["--offline", "list"])
    assert result.exit_code == 0 and os.environ["HF_HUB_OFFLINE"] == "1"


def test_json_outputs_parse(localai_home):
    for args in (["list", "--json"], ["list", "--aliases", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert isinstance(json.loads(result.stdout), list)


# `localai` where Ctrl-Break is a signal of its own, as on Windows (SIGUSR1 stands in for SIGBREAK)
def test_generate_streams_text_to_stdout_only(tiny_llama):
    result = runner.invoke(app, ["generate", str(tiny_llama), "The", "capital", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")
    assert "loading" in result.stderr and "loading" not in result.stdout


def generate_jsonl(*args) -> dict:
    result = runner.invoke(app, ["generate", *args, "--jsonl"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_generate_greedy_is_deterministic_and_matches_transformers(tiny_qwen3):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localai.engine.prompts import encode_prompt

    first = generate_jsonl(str(tiny_qwen3), "Hello world", "--max-new-tokens", "12")
    second = generate_jsonl(str(tiny_qwen3), "Hello world", "--max-new-tokens", "12")
    assert first["text"] == second["text"] and first["tokens"]["generated"] == 12
    assert first["finish_reason"] == "length"

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32)
    ids = torch.tensor([encode_prompt(tokenizer, "Hello world", None, None, None)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert first["text"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_sampling_follows_the_seed(tiny_llama):
    def sample(seed: str) -> str:
        return generate_jsonl(str(tiny_llama), "Hi", "--max-new-tokens", "12", "--temperature", "1.5",
                              "--seed", seed)["text"]

    assert sample("1") == sample("1")
    assert len({sample("1"), sample("2"), sample("3")}) > 1


def test_generate_jsonl_fields(tiny_llama):
    data = generate_jsonl(str(tiny_llama), "Hi", "--max-new-tokens", "3", "--system", "Be brief.")
    assert set(data) >= {"id", "prompt", "text", "tokens", "finish_reason", "timings"}
    assert data["prompt"] == "Hi"


def test_generate_unknown_model(localai_home):
    result = runner.invoke(app, ["generate", "no-such-model", "hi"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("error: unknown model")


@pytest.mark.parametrize("terminal, verbosity, shown", [(True, 0, True), (False, 0, False), (True, 1, False),
                                                        (True, -1, False)])
def test_status_line_only_on_a_terminal_at_normal_verbosity(monkeypatch, terminal, verbosity, shown):
    """The spinner for long steps: a person at a terminal sees it; scripts, -v and -q do not."""
    import io

    from rich.console import Console

    from localai import console

    stream = io.StringIO()
    monkeypatch.setattr(console, "err_console", lambda: Console(file=stream, force_terminal=terminal))
    monkeypatch.setattr(settings, "verbosity", verbosity)
    with console.status_line("loading...") as show:
        show("quantized layer 3: model.layers.0.mlp.up_proj")
    assert ("quantized layer 3" in stream.getvalue()) == shown
    if shown:  # transient: the line is erased when the step ends
        assert stream.getvalue().endswith("\x1b[2K")


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), ("on", True),
                                       ("0", False), ("off", False), ("false", False), ("", False)])
def test_switches_from_the_environment_read_as_huggingface_hub_reads_them(monkeypatch, value, on):
    from localai.settings import env_flag, hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(settings, "offline", False)
    assert env_flag("HF_HUB_OFFLINE") is on and hub_offline() is on


def test_localai_debug_false_shows_no_traceback(localai_home, monkeypatch):
    monkeypatch.setenv("LOCALAI_DEBUG", "false")
    result = runner.invoke(app, ["where", "qwen3-8b"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    monkeypatch.setenv("LOCALAI_DEBUG", "1")
    result = runner.invoke(app, ["generate", "/no/such/model", "hi"])
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_write_failures_name_the_setting_that_moves_the_folder(tmp_path, monkeypatch):
    import errno as errnos

    from localai.cli import _describe_unexpected

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    in_hub = tmp_path / "hf" / "hub" / "models--acme--tiny"
    assert "Choose a writable folder (HF_HOME)" in _describe_unexpected(PermissionError(13, "Permission denied", str(in_hub)))
    read_only = _describe_unexpected(OSError(errnos.EROFS, "Read-only file system", str(tmp_path / "home")))
    assert read_only.startswith("cannot write") and "LOCALAI_HOME" in read_only
    full = Exception("Error while serializing: I/O error: No space left on device (os error 28)")  # safetensors' own type
    assert _describe_unexpected(full).startswith("no space left on device")
    assert _describe_unexpected(ValueError("something else")) is None


def test_the_hint_of_a_one_line_error_is_a_sentence_of_its_own():
    from localai.errors import LocalaiError

    assert LocalaiError("no such file.", "check the path.").one_line() == "no such file. Check the path"
    assert LocalaiError("no audio device", "--out FILE.wav saves it").one_line() == "no audio device. --out FILE.wav saves it"
    assert LocalaiError("cannot  load\nit").one_line() == "cannot load it"


def test_the_setup_script_prints_its_usage_and_refuses_unknown_options(tmp_path):
    import subprocess

    from cli_helpers import REPO_ROOT

    script = str(REPO_ROOT / "scripts" / "setup.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert shown.returncode == 0 and "scripts/setup.sh --dev" in shown.stdout
    refused = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert refused.returncode == 2 and "unknown option --bogus" in refused.stderr and refused.stdout == ""


def test_the_tiny_voxtral_script_takes_help_as_a_flag(tmp_path):
    import subprocess
    import sys

    from cli_helpers import REPO_ROOT

    script = str(REPO_ROOT / "scripts" / "make_tiny_voxtral.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert shown.returncode == 0 and "out_dir" in shown.stdout and list(tmp_path.iterdir()) == []
    missing = subprocess.run([sys.executable, script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert missing.returncode == 2 and list(tmp_path.iterdir()) == []
