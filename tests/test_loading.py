"""Loading a model folder: broken folders end in one-line errors that name the file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line
from localai.cli import app
from localai.errors import LocalaiError

runner = CliRunner()


def broken_copy(tiny_llama: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    return folder


def test_folder_without_config(tmp_path, tiny_llama):
    from localai.loading import load_model

    folder = broken_copy(tiny_llama, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(LocalaiError, match="no config.json"):
        load_model(folder, device="cpu")
    result = runner.invoke(app, ["generate", str(folder), "hi"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "config.json" in one_error_line(result.stderr)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(tmp_path, tiny_llama, damage):
    from localai.loading import load_model

    folder = broken_copy(tiny_llama, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a safetensors file at all",
                         "empty": b""}[damage])
    with pytest.raises(LocalaiError) as info:
        load_model(folder, device="cpu")
    assert str(weights) in info.value.one_line()
    result = runner.invoke(app, ["generate", str(folder), "hi"])
    assert result.exit_code == 1 and "model.safetensors" in one_error_line(result.stderr)


def test_missing_weights_and_bad_config(tmp_path, tiny_llama):
    from localai.loading import load_model

    folder = broken_copy(tiny_llama, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(LocalaiError, match="no weights"):
        load_model(folder, device="cpu")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(LocalaiError, match="not valid JSON"):
        load_model(folder, device="cpu")


def test_a_loader_and_the_store_agree_on_a_missing_shard(tmp_path, tiny_llama):
    """One definition of a complete folder: load_model says what `localai generate FOLDER` says."""
    import json

    from localai.loading import load_model

    folder = broken_copy(tiny_llama, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expected = (f"{folder} is not a model folder: it lacks model-00002-of-00002.safetensors, "
                "which model.safetensors.index.json names")
    with pytest.raises(LocalaiError) as info:
        load_model(folder, device="cpu")
    assert info.value.message == expected and "download or copy the model again" in info.value.one_line()
    result = runner.invoke(app, ["generate", str(folder), "hi"])
    assert result.exit_code == 1 and expected in one_error_line(result.stderr)


def test_missing_tokenizer(tmp_path, tiny_llama):
    from localai.loading import load_tokenizer

    folder = broken_copy(tiny_llama, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(LocalaiError, match="tokenizer"):
        load_tokenizer(folder)


def test_a_folder_without_tokenizer_files_is_refused_before_transformers_sees_it(tmp_path, tiny_llama,
                                                                                   monkeypatch):
    """Some transformers releases build an empty tokenizer from config.json alone, without an error."""
    import transformers

    from localai.loading import load_tokenizer

    folder = broken_copy(tiny_llama, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    with pytest.raises(LocalaiError, match="holds no tokenizer file"):
        load_tokenizer(folder)


def test_load_model_and_tokenizer(tiny_qwen3):
    import torch

    from localai.loading import load_model, load_tokenizer

    model = load_model(tiny_qwen3, device="cpu")
    tokenizer = load_tokenizer(tiny_qwen3)
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("verbosity, hidden", [(-1, True), (0, False)])
def test_quiet_hides_the_gguf_readers_progress_bar(monkeypatch, verbosity, hidden):
    """transformers' GGUF reader uses plain tqdm, outside its own progress-bar switch."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from localai.loading import quiet_transformers
    from localai.settings import settings

    monkeypatch.setattr(gguf_utils, "tqdm", gguf_utils.tqdm)  # restored after the test
    monkeypatch.setattr(settings, "verbosity", verbosity)
    quiet_transformers()
    assert gguf_utils.tqdm([1], file=io.StringIO()).disable is hidden


def test_config_that_does_not_fit_the_weights(tmp_path, tiny_llama):
    """A config.json without hidden_size gets transformers' default (4096): every shape differs."""
    import json

    from localai.loading import load_model

    folder = broken_copy(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LocalaiError, match="do not have the shapes its config.json describes"):
        load_model(folder, device="cpu")
    result = runner.invoke(app, ["generate", str(folder), "hi"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "shapes its config.json describes" in one_error_line(result.stderr)
    assert "LOAD REPORT" not in result.stderr  # transformers' table of every mismatched key is held back


@pytest.mark.parametrize("command", [["generate", "{}", "hi"], ["eval", "{}"], ["chat", "{}"],
                                     ["bench", "{}", "--num-requests", "2"]])
def test_a_voxtral_folder_given_to_a_text_command_is_named_with_the_command_that_takes_it(tiny_voxtral, command):
    result = runner.invoke(app, ["--device", "cpu", *[a.format(tiny_voxtral) for a in command]], input="Hi\n")
    assert result.exit_code == 1 and result.stdout == ""
    assert one_error_line(result.stderr) == (f"error: {tiny_voxtral} is a Voxtral TTS checkpoint, not a text-generation "
                                             f"model. Speak with it: `localai speak --tts-model {tiny_voxtral}`")
