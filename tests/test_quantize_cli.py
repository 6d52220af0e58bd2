"""`localai quantize` and `localai eval` end to end on tiny random models, and their bad input."""

import json
import math
import os
import stat

import pytest

from cli_helpers import invoke_on_cpu, one_error_line


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("The capital of France is Paris. Hello world! How are you today? " * 120)
    return path


@pytest.fixture(scope="module")
def data_free(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tq-data-free"
    result = invoke_on_cpu("-v", "quantize", tiny_llama, "-o", out, "--no-calib", "--json")
    assert result.exit_code == 0, result.output
    return out, result


def test_quantize_data_free_summary(data_free):
    out, result = data_free
    summary = json.loads(result.stdout)
    assert summary["method"] == "turboquant" and summary["calibration"] == "none (data-free)"
    assert summary["layers"] == 14 and summary["output"] == str(out)
    assert summary["bits_per_weight"] == pytest.approx(4.25)
    assert summary["linear_compression_vs_bf16"] >= 3.7
    assert summary["size_after"] < summary["size_before"]
    assert "quantized model.layers.0.self_attn.q_proj [64x64]" in result.stderr  # a line per layer with -v
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "turboquant"


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_the_checkpoint_has_the_modes_of_any_new_file(data_free):
    out, _ = data_free
    umask = current_umask()
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert "model.safetensors" in modes  # which safetensors writes owner-only
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_quantize_with_calibration_file_prints_the_folder(tiny_llama, tmp_path, text_file):
    out = tmp_path / "tq-calib"
    result = invoke_on_cpu("quantize", tiny_llama, "-o", out, "--calib", text_file, "--calib-tokens", 1024)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "calibration    text.txt, 1,024 tokens" in result.stderr and "bits/weight" in result.stderr
    assert "quantized model.layers" not in result.stderr  # a line per layer only with -v
    assert "warning" not in result.stderr
    short = invoke_on_cpu("quantize", tiny_llama, "-o", tmp_path / "tq-short", "--calib", text_file,
                          "--calib-tokens", 8192)
    assert short.exit_code == 0, short.output
    assert "warning: text.txt gives 4,096 calibration tokens of the 8,192 asked for" in short.stderr


def test_quantize_default_calibration_is_self_generated(tiny_qwen3, tmp_path):
    out = tmp_path / "tq-self"
    result = invoke_on_cpu("quantize", tiny_qwen3, "-o", out, "--calib-tokens", 512, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["calibration"].startswith("self-generated") and summary["calib_tokens"] == 512


def _beyond_any_memory(*args, **kwargs):
    """A step that asks for more memory than any machine has: the allocator's own out-of-memory error."""
    import torch

    return torch.empty(1 << 62, dtype=torch.uint8)


def test_running_out_of_memory_while_sampling_names_the_ways_around_it(tiny_qwen3, tmp_path, monkeypatch):
    from localai.quant import calib_data

    monkeypatch.setattr(calib_data, "self_generated", _beyond_any_memory)
    out = tmp_path / "tq-oom"
    line = _one_line_error(invoke_on_cpu("quantize", tiny_qwen3, "-o", out, "--calib-tokens", 512))
    assert line == ("error: out of memory on cpu while the model sampled its calibration text. Calibrate on a "
                    "text file with --calib FILE (layer by layer, no sampling), or use --no-calib")
    assert not out.exists()


def test_running_out_of_memory_in_the_layers_names_what_needs_less(tiny_llama, tmp_path, text_file, monkeypatch):
    from localai.quant import calibrate

    monkeypatch.setattr(calibrate, "quantize_calibrated", _beyond_any_memory)
    out = tmp_path / "tq-oom"
    line = _one_line_error(invoke_on_cpu("quantize", tiny_llama, "-o", out, "--calib", text_file,
                                         "--calib-tokens", 1024))
    assert line == ("error: out of memory on cpu while quantizing layer by layer. "
                    "Use --no-calib (data-free, one weight at a time)")
    assert not out.exists()


def test_eval_on_quantized_and_fp_models(data_free, tiny_llama, text_file):
    out, _ = data_free
    fp = invoke_on_cpu("eval", tiny_llama, "--text", text_file, "--windows", 2, "--ctx", 64, "--json")
    tq = invoke_on_cpu("eval", out, "--text", text_file, "--windows", 2, "--ctx", 64, "--json")
    assert fp.exit_code == 0 and tq.exit_code == 0, fp.output + tq.output
    fp_res, tq_res = json.loads(fp.stdout), json.loads(tq.stdout)
    assert tq_res["quantization"] == "turboquant" and fp_res["quantization"] == "none"
    assert tq_res["tokens_scored"] == 2 * 63
    assert math.isfinite(tq_res["perplexity"]) and tq_res["perplexity"] > 1
    plain = invoke_on_cpu("eval", out, "--text", text_file, "--windows", 2, "--ctx", 64)
    assert float(plain.stdout) == pytest.approx(tq_res["perplexity"], abs=1e-3)
    assert "scoring 2 windows of 64 tokens" in plain.stderr
    one = invoke_on_cpu("eval", out, "--text", text_file, "--windows", 1, "--ctx", 64)
    assert one.exit_code == 0 and "scoring 1 window of 64 tokens" in one.stderr, one.stderr


def test_eval_several_models_one_table_with_speed(data_free, tiny_llama, text_file):
    out, _ = data_free
    args = ("eval", tiny_llama, out, "--text", text_file, "--windows", 2, "--ctx", 64, "--speed", "--speed-tokens", 6)
    rows = json.loads(invoke_on_cpu(*args, "--json").stdout)
    assert [row["quantization"] for row in rows] == ["none", "turboquant"]
    for row in rows:
        assert row["decode_tokens"] == 5 and row["decode_tokens_per_s"] > 0
        assert row["tokens_scored"] == 2 * 63 and math.isfinite(row["perplexity"])
    assert 0 < rows[1]["weight_bytes"] < rows[0]["weight_bytes"]
    table = invoke_on_cpu(*args)
    assert table.exit_code == 0, table.output
    header, fp_line, tq_line = table.stdout.strip().splitlines()
    assert header.split() == ["model", "quantization", "weights", "perplexity", "decode", "tok/s"]
    assert fp_line.split()[:2] == [str(tiny_llama), "none"] and tq_line.split()[:2] == [str(out), "turboquant"]
    assert float(tq_line.split()[4]) == pytest.approx(rows[1]["perplexity"], rel=1e-3)


def test_eval_checks_every_model_before_scoring_any(tiny_llama, tmp_path, text_file):
    import shutil

    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, tmp_path / "absent-model", "--text", text_file, "--windows", 1,
                                "--ctx", 16))
    assert "absent-model" in line
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, no_tokenizer, "--text", text_file, "--windows", 1,
                                         "--ctx", 16))
    assert f"cannot load the tokenizer in {no_tokenizer}" in line
    assert invoke_on_cpu("eval", tiny_llama, "--speed", "--speed-tokens", 1).exit_code == 2
    assert invoke_on_cpu("eval", tiny_llama, "--text", text_file, "--windows", 0).exit_code == 2
    assert invoke_on_cpu("eval", tiny_llama, "--text", text_file, "--ctx", 1).exit_code == 2


@pytest.mark.parametrize("method", ["int4", "nf4"])
def test_baseline_methods_quantize_and_evaluate(method, tiny_llama, tmp_path, text_file):
    out = tmp_path / method
    result = invoke_on_cpu("quantize", tiny_llama, "-o", out, "--method", method, "--group-size", 64, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == method and summary["calibration"] == "not used"
    assert 4.0 < summary["bits_per_weight"] < 5.0
    evaluated = invoke_on_cpu("eval", out, "--text", text_file, "--windows", 1, "--ctx", 64, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert math.isfinite(json.loads(evaluated.stdout)["perplexity"])


def _nothing_written(parent):
    return not any(parent.iterdir())


def test_unknown_method(tiny_llama, tmp_path):
    target = tmp_path / "out" / "q"
    line = _one_line_error(invoke_on_cpu("quantize", tiny_llama, "-o", target, "--method", "gptq8"), code=2)
    assert "unknown method 'gptq8'" in line and "turboquant, nf4, int4" in line
    assert not (tmp_path / "out").exists()


def test_group_size_that_does_not_divide(tiny_llama, tmp_path):
    line = _one_line_error(invoke_on_cpu("quantize", tiny_llama, "-o", tmp_path / "q", "--group-size", 128, "--no-calib"))
    assert "group size 128 does not divide the padded input size 64" in line
    assert line.endswith("Choose a group size that divides it: 32, 64")
    assert _nothing_written(tmp_path)


def test_conflicting_and_inapplicable_flags(tiny_llama, tmp_path, text_file):
    both = invoke_on_cpu("quantize", tiny_llama, "-o", tmp_path / "q", "--calib", text_file, "--no-calib")
    assert "exclude each other" in _one_line_error(both, code=2)
    nf4 = invoke_on_cpu("quantize", tiny_llama, "-o", tmp_path / "q", "--method", "nf4", "--group-size", 32)
    assert "blocks of 64" in _one_line_error(nf4, code=2)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("flags, message", [
    (["--method", "int4", "--group-size", "8"], "int4 kernel takes groups of 32, 64, 128, 256, not 8"),
    (["--group-size", "48"], "TurboQuant's kernels take groups of 32, 64, 128, 256, not 48"),
    (["--group-size", "0"], "TurboQuant's kernels take groups of 32, 64, 128, 256, not 0"),
    (["--calib-tokens", "100"], "--calib-tokens 100 is less than one calibration sequence (512 tokens)"),
])
def test_options_that_cannot_work_are_usage_errors_before_loading(tmp_path, flags, message):
    result = invoke_on_cpu("quantize", tmp_path / "absent-model", "-o", tmp_path / "q", *flags)
    assert message in _one_line_error(result, code=2)


def test_existing_output_is_refused(data_free, tiny_llama):
    out, _ = data_free
    line = _one_line_error(invoke_on_cpu("quantize", tiny_llama, "-o", out, "--no-calib"))
    assert "already exists" in line


def test_output_and_calibration_paths_are_checked_before_loading(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    absent_model = tmp_path / "absent-model"  # the paths fail first: no model is looked up
    line = _one_line_error(invoke_on_cpu("quantize", absent_model, "-o", a_file / "q", "--no-calib"))
    assert line == f"error: cannot create {a_file / 'q'}: {a_file} is a file, not a folder. Choose another -o folder"
    line = _one_line_error(invoke_on_cpu("quantize", absent_model, "-o", tmp_path / "q", "--calib", tmp_path / "no.txt"))
    assert line == f"error: cannot read {tmp_path / 'no.txt'}: no such file. Check the path given to --calib"
    line = _one_line_error(invoke_on_cpu("quantize", absent_model, "-o", tmp_path / "q", "--calib", tmp_path))
    assert line == f"error: cannot read {tmp_path}: it is a folder. Give --calib a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]



def test_an_output_folder_that_cannot_be_written_is_refused_before_loading(tmp_path):
    """Not after the quantization, when the checkpoint is staged beside -o (a calibrated 8B model
    takes hours). Root loses its permission override via setpriv."""
    import shutil
    import subprocess
    import sys

    from cli_helpers import REPO_ROOT

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
        prefix = [shutil.which("setpriv"), "--bounding-set=-dac_override,-dac_read_search"]
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "localai", "quantize", str(tmp_path / "absent-model"),
                               "-o", str(read_only / "q"), "--no-calib"], capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    finally:
        read_only.chmod(0o755)
    assert done.returncode == 1 and one_error_line(done.stderr) == (
        f"error: cannot create {read_only / 'q'}: {read_only} is not writable (Permission denied). "
        "Choose another -o folder")
    assert list(read_only.iterdir()) == []

def test_corrupt_quantized_checkpoint(data_free, tmp_path, text_file):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data_free[0], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    line = _one_line_error(invoke_on_cpu("eval", broken, "--text", text_file, "--windows", 1, "--ctx", 16))
    assert "truncated or corrupt" in line


def test_missing_quantization_config_fields(data_free, tmp_path, text_file):
    import shutil

    broken = tmp_path / "fields"
    shutil.copytree(data_free[0], broken)
    config = json.loads((broken / "config.json").read_text())
    del config["quantization_config"]["group_size"], config["quantization_config"]["max_block"]
    (broken / "config.json").write_text(json.dumps(config))
    line = _one_line_error(invoke_on_cpu("eval", broken, "--text", text_file, "--windows", 1, "--ctx", 16))
    assert "lacks group_size, max_block" in line


def test_eval_bad_input(tiny_llama, tmp_path, text_file):
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, "--text", tmp_path / "absent.txt"))
    assert line == f"error: cannot read {tmp_path / 'absent.txt'}: no such file. Check the path given to --text"
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, "--text", tmp_path))
    assert line == f"error: cannot read {tmp_path}: it is a folder. Give --text a file"
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, "--text", text_file, "--windows", 1, "--ctx", 513))
    assert "--ctx 513 is longer than the context of" in line and line.endswith("Use --ctx 512 or less")
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, "--text", text_file, "--windows", 500, "--ctx", 64))
    assert "500 asked for" in line


def test_an_already_quantized_model_is_refused(data_free, tmp_path):
    out, _ = data_free
    result = invoke_on_cpu("quantize", out, "-o", tmp_path / "again", "--no-calib")
    assert "is already quantized (turboquant)" in _one_line_error(result) and not (tmp_path / "again").exists()


def _damaged_gains(data_free, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-gains"
    shutil.copytree(data_free[0], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.gains"].fill_(float("nan"))
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    return broken


def test_eval_finds_nan_gains_before_scoring_any_model(data_free, tiny_llama, tmp_path, text_file):
    broken = _damaged_gains(data_free, tmp_path)
    line = _one_line_error(invoke_on_cpu("eval", tiny_llama, broken, "--text", text_file, "--windows", 1,
                                         "--ctx", 16))
    assert "model.layers.0.mlp.up_proj.gains" in line and "NaN or infinite" in line


def test_generate_refuses_a_damaged_checkpoint(data_free, tmp_path):
    broken = _damaged_gains(data_free, tmp_path)
    result = invoke_on_cpu("generate", broken, "hi", "--max-new-tokens", 2)
    assert result.exit_code == 1 and result.stdout == "", result.output
    line = one_error_line(result.stderr)  # after the "loading ..." status line
    assert "model.layers.0.mlp.up_proj.gains" in line and "NaN or infinite" in line


def test_nf4_shows_no_transformers_progress_bars(tiny_llama, tmp_path):
    """Loading and saving the NF4 model goes through transformers, whose bars stay off without -v."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()  # as in a fresh process
    try:
        result = invoke_on_cpu("quantize", tiny_llama, "-o", tmp_path / "nf4", "--method", "nf4")
    finally:
        (transformers_logging.enable_progress_bar if was_enabled else transformers_logging.disable_progress_bar)()
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr
    assert "it/s" not in result.stderr, result.stderr
