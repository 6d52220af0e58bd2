"""Writing to the store: staging folders, what a killed process leaves behind, two conversions of
one model at once, removal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localai.cli import app

runner = CliRunner()


def test_staged_folder_is_removed_on_failure(localai_home):
    from localai.store.home import models_dir, staged_model_dir

    with pytest.raises(RuntimeError):
        with staged_model_dir("half") as staging:
            (staging / "part.safetensors").write_bytes(b"x")
            raise RuntimeError("conversion failed")
    assert list(models_dir().iterdir()) == []


def test_staging_left_by_a_killed_process_is_removed_by_the_next_write(localai_home):
    from localai.store.home import models_dir, staged_model_dir, writable_models_dir

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its process id now belongs to nobody
    folder = writable_models_dir()
    abandoned = folder / f".partial-{gone.pid}-smollm2-135m-abc123"
    (abandoned / "model.safetensors").parent.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"half a file")
    live = folder / f".partial-{os.getppid()}-other-def456"  # a live process: left alone
    live.mkdir()
    with staged_model_dir("next") as staging:
        assert staging.name.startswith(f".partial-{os.getpid()}@")
        (staging / "config.json").write_text("{}")
    assert not abandoned.exists() and live.exists()
    assert sorted(p.name for p in models_dir().iterdir()) == [live.name, "next"]


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its process id now belongs to nobody
    return gone.pid


def test_staging_of_another_machine_is_left_alone_until_a_week_old(localai_home):
    from localai.store.home import writable_models_dir

    folder = writable_models_dir()
    elsewhere = folder / f".partial-{dead_pid()}@0badc0de-m-abc123"  # its process id means nothing here
    legacy = folder / f".partial-{dead_pid()}-m-def456"  # named before machines were recorded: judged here
    forgotten = folder / ".partial-1@0badc0de-m-789abc"
    for staging in (elsewhere, legacy, forgotten):
        staging.mkdir()
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(forgotten, (week_ago, week_ago))
    writable_models_dir()
    assert elsewhere.exists() and not legacy.exists() and not forgotten.exists()


def test_stale_staging_is_never_taken_for_a_model(localai_home, tiny_llama):
    import shutil

    from localai.store.home import write_metadata, writable_models_dir

    stale = shutil.copytree(tiny_llama, writable_models_dir() / ".partial-1@0badc0de-tiny-abc123")
    write_metadata(stale, name="tiny", source="/somewhere/tiny.gguf")
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []
    assert runner.invoke(app, ["where", "tiny"]).exit_code == 1
    assert runner.invoke(app, ["where", stale.name]).exit_code == 1


def test_removal_is_not_blocked_by_a_leftover_of_the_same_process_id(localai_home, tiny_llama):
    """A process killed while removing a model leaves its renamed-aside copy; a later process with
    the same id (ids are reused) must still be able to remove a model of that name."""
    import shutil

    from localai.store.home import model_dir, remove_tree, write_metadata, writable_models_dir

    leftover = writable_models_dir() / f".partial-{os.getpid()}-removing-tiny"  # as the old naming made it
    (leftover / "part").mkdir(parents=True)
    for attempt in range(2):
        folder = shutil.copytree(tiny_llama, model_dir("tiny"))
        write_metadata(folder, name="tiny", source="local")
        remove_tree(folder)
        assert not folder.exists(), attempt


def test_two_conversions_of_one_model_take_turns(tmp_path, localai_home, monkeypatch):
    """The second waits for the first, then finds its folder: one conversion, one folder, nothing else."""
    import localai.store.gguf_import as gguf_import

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(gguf_import, "gguf_quantization", lambda path: "Q8_0")
    started, conversions = threading.Event(), []

    def slow_convert(gguf_path: Path, out: Path) -> None:
        conversions.append(out)
        started.set()
        time.sleep(1.5)  # long enough for the second import to reach the store
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_import, "_convert", slow_convert)
    results, errors = [], []

    def import_once():
        try:
            results.append(gguf_import.import_gguf(gguf, "m"))
        except Exception as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)

    first = threading.Thread(target=import_once)
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=import_once)
    second.start()
    first.join(60)
    second.join(60)
    assert errors == [] and len(conversions) == 1
    assert results == [localai_home / "models" / "m"] * 2
    assert [p.name for p in (localai_home / "models").iterdir()] == ["m"]
