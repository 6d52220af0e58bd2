"""`localai generate`: prompt sources, output formats, order, stats, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from localai.cli import app

runner = CliRunner()
PROMPTS = ["The capital of France", "Hello world! How are", "0123"]


@pytest.fixture(autouse=True)
def global_state_restored(monkeypatch):
    """`--device cpu` and `-v` change process-wide settings; undo them after each test."""
    from localai.settings import settings

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in ("device", "verbosity", "offline", "debug"):
        monkeypatch.setattr(settings, name, getattr(settings, name))


def generate(*args, input=None, options=("--device", "cpu")):
    return runner.invoke(app, [*options, "generate", *map(str, args)], input=input)


@pytest.fixture(scope="module")
def expected(tiny_llama):
    """Greedy answers from the engine API, the reference for what the CLI prints."""
    from localai.engine.api import Engine, generate_batch
    from localai.engine.request import SamplingParams
    from localai.loading import load_model, load_tokenizer

    engine = Engine(load_model(tiny_llama, device="cpu"), load_tokenizer(tiny_llama))
    requests = [engine.request(p, params=SamplingParams(max_new_tokens=8)) for p in PROMPTS]
    return [r.text for r in generate_batch(engine, requests)]


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_single_prompt_streams_the_answer_to_stdout(tiny_llama, expected):
    result = generate(tiny_llama, PROMPTS[0], "--max-new-tokens", 8)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected[0] + "\n"
    assert "loading" in result.stderr


def test_several_prompts_answer_in_input_order_separated_by_blank_lines(tiny_llama, expected):
    result = generate(tiny_llama, *PROMPTS, "--max-new-tokens", 8, "--batch-size", 2)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "\n\n".join(expected) + "\n"


def test_jsonl_has_one_object_per_request_in_input_order(tiny_llama, expected):
    result = generate(tiny_llama, *PROMPTS, "--max-new-tokens", 8, "--jsonl")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["text"] for r in rows] == expected
    assert all(r["tokens"]["generated"] == 8 and r["finish_reason"] == "length" for r in rows)
    assert set(rows[0]["timings"]) == {"time_to_first_token_s", "total_s", "tokens_per_second"}


def test_json_document_holds_results_and_stats(tiny_llama, expected):
    result = generate(tiny_llama, *PROMPTS[:2], "--max-new-tokens", 8, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["text"] for r in data["results"]] == expected[:2]
    assert data["stats"]["generated_tokens"] == 16 and data["stats"]["engine"] == "lean"
    assert "interrupted" not in data  # only a Ctrl-C marks the document


@pytest.mark.parametrize("output", ["--jsonl", "--json"])
def test_ctrl_c_exits_130_and_keeps_the_answers_already_finished(tiny_llama, tmp_path, monkeypatch, output):
    """The second request finishes first; its answer is written though the first one never ends."""
    from localai.engine.api import Engine

    real_stream = Engine.stream

    def interrupted_when_the_short_one_is_done(self, requests, **options):
        for event in real_stream(self, requests, **options):
            yield event
            if event.index == 1 and event.finished:
                raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "stream", interrupted_when_the_short_one_is_done)
    file = tmp_path / "batch.jsonl"
    file.write_text("\n".join(json.dumps({"prompt": p, "max_new_tokens": n, "min_new_tokens": n})
                              for p, n in zip(PROMPTS, [30, 2, 30])) + "\n")
    result = generate(tiny_llama, "-f", file, output)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    if output == "--jsonl":
        rows = [json.loads(line) for line in result.stdout.splitlines()]
    else:
        document = json.loads(result.stdout)
        rows = document["results"]
        assert document["interrupted"] is True and document["stats"]["requests"] == 1  # the finished ones
    assert [(r["id"], r["finish_reason"], r["tokens"]["generated"]) for r in rows] == [(1, "length", 2)]


def test_prompts_from_a_file_and_from_stdin(tiny_llama, expected, tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(PROMPTS) + "\n")
    from_file = generate(tiny_llama, "-f", file, "--max-new-tokens", 8)
    assert from_file.exit_code == 0, from_file.stderr
    assert from_file.stdout == "\n\n".join(expected) + "\n"
    piped = generate(tiny_llama, "--max-new-tokens", 8, input="\n".join(PROMPTS[:2]) + "\n")
    assert piped.exit_code == 0 and piped.stdout == "\n\n".join(expected[:2]) + "\n"
    dash = generate(tiny_llama, PROMPTS[0], "-", "--max-new-tokens", 8, input=PROMPTS[1] + "\n")
    assert dash.stdout == "\n\n".join(expected[:2]) + "\n"


def test_jsonl_file_with_per_request_options_and_messages(tiny_llama, tmp_path):
    file = tmp_path / "batch.jsonl"
    file.write_text("\n".join(json.dumps(row) for row in [
        {"id": "short", "prompt": PROMPTS[0], "max_new_tokens": 3},
        {"id": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5},
        {"id": "sampled", "prompt": PROMPTS[1], "temperature": 0.9, "seed": 4, "max_new_tokens": 6},
    ]) + "\n")
    result = generate(tiny_llama, "-f", file, "--jsonl")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["short", "chat", "sampled"]
    assert [r["tokens"]["generated"] for r in rows] == [3, 5, 6]
    again = generate(tiny_llama, "-f", file, "--jsonl")
    assert [json.loads(line)["text"] for line in again.stdout.splitlines()] == [r["text"] for r in rows]


def test_a_malformed_line_is_reported_with_its_number_before_loading_the_model(tmp_path):
    file = tmp_path / "batch.jsonl"
    file.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n')
    result = generate(tmp_path / "no-such-model", "-f", file)
    line = one_line_error(result)
    assert f"{file}:2: not valid JSON" in line
    assert "loading" not in result.stderr


def test_a_prompts_file_that_cannot_be_read_is_named_before_loading_the_model(tmp_path):
    result = generate(tmp_path / "no-such-model", "-f", tmp_path)  # a folder, not a file
    line = one_line_error(result)
    assert line.startswith(f"error: cannot read {tmp_path}: ") and "-f" in line
    assert "loading" not in result.stderr


def test_stdin_that_is_not_utf8_is_a_one_line_error_before_loading_the_model(tmp_path):
    line = one_line_error(generate(tmp_path / "no-such-model", input=b"caf\xe9\n"))
    assert "<stdin> is not UTF-8 text" in line


def test_a_prompt_longer_than_the_context_is_named_in_the_error(tiny_llama, tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("Hi\n" + "word " * 600 + "\nHello\n")  # the tiny model's context is 512 tokens
    line = one_line_error(generate(tiny_llama, "-f", file, "--raw"))
    assert "request 1: its prompt has" in line and "512-token context" in line


def test_stats_go_to_stderr_and_verbose_shows_the_sizing_arithmetic(tiny_llama, expected):
    result = generate(tiny_llama, PROMPTS[0], "--max-new-tokens", 8, "--stats", options=("--device", "cpu", "-v"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected[0] + "\n"
    stderr = " ".join(result.stderr.split())
    assert "1 requests: " in stderr and "8 generated tokens" in stderr and "tokens/s" in stderr
    assert "KV bytes per token: 2 x layers x kv_heads x head_dim x dtype bytes = 512" in stderr


@pytest.mark.parametrize("args, code, message", [
    (["--batch-size", "lots"], 2, "--batch-size must be auto or a positive number"),
    (["--temperature", "-1"], 2, "temperature must be 0"),
    (["--top-p", "0"], 2, "top_p must be in"),
    (["--temperature", "inf"], 2, "must be finite numbers"),
    (["--json", "--jsonl"], 2, "--json and --jsonl exclude each other"),
    (["--seed", 2**64], 2, "seed must fit in 64 bits"),
])
def test_bad_options_are_one_line_errors(tiny_llama, args, code, message):
    assert message in one_line_error(generate(tiny_llama, "hi", *args), code)


def test_no_prompts_is_a_usage_error(tiny_llama):
    assert "no prompts" in one_line_error(generate(tiny_llama, input=""), 2)


def test_an_empty_raw_prompt_is_a_usage_error_before_loading(tmp_path):
    # the model folder does not exist: the prompt is refused before any loading
    assert "prompt 2 is empty" in one_line_error(generate(tmp_path / "absent", "Hi", "", "--raw"), 2)


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--compile"], "--compile needs a CUDA GPU"),  # --device cpu
])
def test_flags_the_device_or_loader_cannot_take_are_usage_errors_before_loading(tmp_path, args, message):
    assert message in one_line_error(generate(tmp_path / "absent", "Hi", *args), 2)


def test_unknown_model_is_a_one_line_error(tmp_path, localai_home):
    line = one_line_error(generate(tmp_path / "nothing-here", "hi"))
    assert "nothing-here" in line


@pytest.mark.parametrize("fmt", ["--jsonl", "--json", None])
def test_a_stdout_in_a_legacy_encoding_gets_ascii_json_and_never_a_crash(tiny_llama, fmt):
    """A cp1252 pipe on Windows or PYTHONIOENCODING=ascii: JSON is ASCII, and text it cannot hold is '?'."""
    import os

    from cli_helpers import run_cli

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    prompt = "café ☕ 東京"
    result = run_cli("--device", "cpu", "generate", str(tiny_llama), prompt, "--max-new-tokens", "3",
                     *([fmt] if fmt else []), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    if fmt == "--jsonl":
        assert json.loads(result.stdout)["prompt"] == prompt
    elif fmt == "--json":
        assert json.loads(result.stdout)["results"][0]["prompt"] == prompt


def test_unencodable_text_is_replaced_instead_of_raising(monkeypatch):
    import io
    import sys

    from localai.cli import tolerate_unencodable_output
    from localai.console import out

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    tolerate_unencodable_output()
    out("café")
    assert raw.getvalue() == b"caf?\n"


@pytest.mark.parametrize("chosen, expected", [(None, "日本\n".encode()), ("cp1252", b"??\n")])
def test_a_windows_pipe_gets_utf8_unless_pythonioencoding_chose(chosen, expected, monkeypatch):
    import io
    import sys

    from localai.cli import tolerate_unencodable_output
    from localai.console import out

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252"))  # what Python picks for a pipe
    if chosen:
        monkeypatch.setenv("PYTHONIOENCODING", chosen)
    else:
        monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    tolerate_unencodable_output()
    out("日本")
    assert raw.getvalue() == expected
