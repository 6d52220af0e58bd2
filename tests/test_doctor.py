"""`localai doctor`: one record per component, ok/missing/info with a hint, JSON and text output."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from localai import doctor
from localai.cli import app

runner = CliRunner()


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def test_report_covers_the_machine(localai_home):
    import torch

    checks = by_name(doctor.run_checks())
    for name in ("python", "torch", "cuda", "triton", "bitsandbytes", "portaudio", "voxtral weights",
                 "localai home", "hf cache"):
        assert name in checks, name
    assert torch.__version__ in checks["torch"].detail
    assert (checks["cuda"].status == "ok") == torch.cuda.is_available()
    if torch.cuda.is_available():
        assert "gpu0" in checks and "GiB free" in checks["gpu0"].detail and "gpu0 bf16" in checks


def test_every_missing_item_says_what_to_do(localai_home):
    for check in doctor.run_checks():
        assert check.status in ("ok", "missing", "info"), check
        if check.status == "missing":
            assert check.hint, check


def test_portaudio_record_matches_the_import():
    try:
        import sounddevice  # noqa: F401

        expected = "ok"
    except OSError:
        expected = "missing"
    [portaudio, *_] = doctor.audio_checks()
    assert portaudio.name == "portaudio" and portaudio.status == expected


def test_cache_sizes_follow_the_folders(localai_home, tiny_llama):
    empty = by_name(doctor.cache_checks())["localai home"]
    assert empty.status == "info" and "empty" in empty.detail
    shutil.copytree(tiny_llama, localai_home / "models" / "tiny")
    filled = by_name(doctor.cache_checks())["localai home"]
    assert filled.status == "ok" and str(localai_home) in filled.detail and "KB" in filled.detail



@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_a_home_that_is_a_file_is_missing_not_ok(localai_home, tmp_path, monkeypatch, under):
    """LOCALAI_HOME=~/notes.txt: nothing can be written there, so doctor says so and how to fix it."""
    file = tmp_path / "notes.txt"
    file.write_text("not a folder")
    monkeypatch.setenv("LOCALAI_HOME", str(file / "home" if under else file))
    home = by_name(doctor.cache_checks())["localai home"]
    assert home.status == "missing" and "not a folder" in home.detail and "LOCALAI_HOME" in home.hint

def test_a_crashing_check_becomes_a_missing_record(monkeypatch, localai_home):
    def broken() -> list:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "CHECK_GROUPS", [doctor.python_checks, broken])
    checks = doctor.run_checks()
    assert checks[0].name == "python"
    assert checks[-1].status == "missing" and "driver exploded" in checks[-1].detail
    assert "--debug" in checks[-1].hint


def test_debug_shows_a_crashing_checks_traceback(monkeypatch, localai_home, capsys):
    from localai.settings import settings

    def broken() -> list:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "CHECK_GROUPS", [broken])
    monkeypatch.setattr(settings, "debug", True)
    doctor.run_checks()
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [True, False])
def test_doctor_command(as_json, localai_home):
    result = runner.invoke(app, ["doctor", "--json"] if as_json else ["doctor"])
    assert result.exit_code == 0
    if as_json:
        records = json.loads(result.stdout)
        assert {"name", "status", "detail", "hint"} <= set(records[0])
    else:
        lines = result.stdout.strip().splitlines()
        assert lines[0].split()[:2] == ["ok", "python"]
        assert all(line.split()[0] in ("ok", "missing", "info") for line in lines)


def test_no_bitsandbytes_import_noise_on_stderr(localai_home):
    """bitsandbytes logs a warning at import about an optional hub kernel; localai keeps it quiet
    unless asked for detail (-v)."""
    from cli_helpers import run_cli

    result = run_cli("doctor", env=dict(os.environ, LOCALAI_HOME=str(localai_home)))
    assert result.returncode == 0 and "gemm_4bit_forward" not in result.stderr
