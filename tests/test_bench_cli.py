"""`localai bench` end to end on CPU with tiny models: DP, TP, scaling, reports, bad input."""

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localai.bench.tp import check_shardable, even_ranges
from localai.cli import app
from localai.errors import LocalaiError
from localai.host import usable_cores

runner = CliRunner()
TWO_CORES = pytest.mark.skipif(len(usable_cores()) < 2, reason="needs two CPU cores")
SMALL = ["--input-len", "8", "--output-len", "5", "--warmup", "1"]
SMALL_FROM_FILE = SMALL[2:]  # a prompts file sets its own input lengths


@pytest.fixture(autouse=True)
def global_state_restored(monkeypatch):
    """`--device cpu` sets CUDA_VISIBLE_DEVICES and the global settings; undo both after each test."""
    from localai.settings import settings

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in ("device", "verbosity", "offline", "debug"):
        monkeypatch.setattr(settings, name, getattr(settings, name))


def bench(*args):
    return runner.invoke(app, ["--device", "cpu", "bench", *map(str, args)])


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@TWO_CORES
def test_dp2_with_scaling_from_a_prompts_file(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("The capital of France is\n{\"prompt\": \"Hello world! How are you\"}\nLocal models run\n")
    result = bench(tiny_llama, "--dp", 2, "--scaling", "--prompts", prompts, "--num-requests", 5, *SMALL_FROM_FILE,
                   "--repeats", 2, "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "localai.bench/2"
    assert report["workload"]["source"] == str(prompts) and report["workload"]["num_requests"] == 5
    dp, alone = report["runs"]
    assert dp["name"] == "dp2" and alone["name"] == "dp1-alone"
    assert len(dp["placements"]) == 2 and all(p.startswith("cpu core") for p in dp["placements"])
    assert alone["placements"] == dp["placements"][:1] and len(dp["replicas"]) == 2
    assert [r["requests"] for r in dp["replicas"]] == [3, 2] and alone["replicas"][0]["requests"] == 3
    assert dp["metrics"]["completed"] == 5 and dp["metrics"]["total_output_tokens"] == 25  # EOS ignored
    assert len(dp["repeats"]) == 2 and dp["metrics_sd"]["output_throughput"] is not None
    [scaling] = report["scaling"]
    assert scaling["run"] == "dp2" and scaling["baseline"] == "dp1-alone"
    assert scaling["processes"] == 2 and scaling["speedup"] > 0
    env = report["environment"]
    assert {"torch", "transformers", "bitsandbytes", "localai", "git_commit", "command", "cpu"} <= set(env)


@TWO_CORES
def test_compare_dp_tp_greedy_outputs_match(tiny_qwen3):
    result = bench(tiny_qwen3, "--compare", "dp,tp", "--num-requests", 4, *SMALL, "--batch-size", 2)
    assert result.exit_code == 0, result.stderr
    table = result.stdout
    assert table.startswith("run") and "dp2" in table and "tp2" in table
    assert "greedy outputs match" in table and "gloo" in table


def test_compare_with_scaling_reports_both_modes_in_every_format(tiny_llama, monkeypatch):
    """--compare dp,tp --scaling gave the DP run a scaling figure and the TP run none. Fake workers
    stand in for the model; each format is asked for once."""
    from localai.bench import dp, launcher

    fake_worker = Path(__file__).with_name("fake_bench_worker.py")
    monkeypatch.setattr(launcher, "WORKER_COMMAND", [sys.executable, str(fake_worker)])
    monkeypatch.setattr(dp, "usable_cores", lambda: [0, 1])

    def report_as(fmt: str) -> str:
        result = bench(tiny_llama, "--compare", "dp,tp", "--scaling", "--num-requests", 4, *SMALL, "--format", fmt)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    report = json.loads(report_as("json"))
    assert [run["name"] for run in report["runs"]] == ["dp2", "tp2", "dp1-alone", "tp1-alone"]
    assert [run["metrics"]["completed"] for run in report["runs"]] == [4, 4, 2, 4]
    assert [(s["run"], s["baseline"]) for s in report["scaling"]] == [("dp2", "dp1-alone"), ("tp2", "tp1-alone")]
    for text in (report_as("table"), report_as("md")):
        assert re.search(r"scaling: dp2 is [\d.]+x dp1-alone", text)
        assert re.search(r"scaling: tp2 is [\d.]+x tp1-alone", text)
    lines = [json.loads(line) for line in report_as("jsonl").splitlines()]
    assert [line["scaling"]["baseline"] for line in lines if line["kind"] == "scaling"] == ["dp1-alone", "tp1-alone"]
    rows = {row["run"]: row for row in csv.DictReader(io.StringIO(report_as("csv")))}
    assert rows["dp2"]["scaling_baseline"] == "dp1-alone" and rows["tp2"]["scaling_baseline"] == "tp1-alone"


@TWO_CORES
def test_compare_on_many_devices_uses_no_more_than_tp_can_shard(tiny_llama, monkeypatch):
    """With neither --dp nor --tp, --compare takes every device: on an 8-core CPU that was --tp 8 for a
    model with 2 key/value heads, refused with an error about a --tp 8 nobody had typed."""
    from localai.bench import session

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(session, "_device_count", lambda device: 8)
    prepared = session.prepare(session.BenchOptions(model=str(tiny_llama), compare="dp,tp", num_requests=4))
    assert (prepared.plan.dp, prepared.plan.tp, len(prepared.plan.places)) == (2, 2, 2)


def test_unknown_format(tiny_llama):
    assert "unknown format 'xml'" in one_line_error(bench(tiny_llama, "--format", "xml"), code=2)


@TWO_CORES
def test_a_prompts_file_shorter_than_the_replicas_is_a_usage_error(tiny_llama, tmp_path):
    """One prompt for two replicas left one idle, yet the run was reported as dp2 with its scaling."""
    prompts = tmp_path / "one.txt"
    prompts.write_text("The capital of France is\n")
    line = one_line_error(bench(tiny_llama, "--dp", 2, "--prompts", prompts, *SMALL_FROM_FILE), code=2)
    assert "1 request(s) leave some of the 2 replicas idle" in line and "--num-requests 2" in line


@TWO_CORES
def test_tensor_parallel_ranks_share_even_one_request(tiny_llama):
    result = bench(tiny_llama, "--tp", 2, "--num-requests", 1, *SMALL, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["runs"][0]["metrics"]["completed"] == 1


def test_dp_beyond_the_cores(tiny_llama):
    line = one_line_error(bench(tiny_llama, "--dp", 999, *SMALL))
    assert "--dp 999 needs 999 CPU cores" in line


def test_input_beyond_the_context(tiny_llama):
    line = one_line_error(bench(tiny_llama, "--input-len", 500, "--output-len", 100))
    assert "beyond the model's context of 512" in line


def test_a_huge_input_len_is_refused_before_any_prompt_is_drawn(tiny_llama, monkeypatch):
    def draw(*args):
        raise AssertionError("drew random prompts beyond the context")

    monkeypatch.setattr("localai.bench.session.random_workload", draw)
    line = one_line_error(bench(tiny_llama, "--input-len", 10**9, "--output-len", 5))
    assert "input 1000000000 + output 5 = 1000000005 tokens is beyond the model's context of 512" in line


@pytest.mark.parametrize("args, message", [
    (["--compare", "dp,pp"], "--compare 'dp,pp'"),
    (["--dp", "2", "--tp", "2"], "not supported"),
    (["--batch-size", "lots"], "--batch-size 'lots'"),
    (["--emit", "sglang"], "--emit 'sglang'"),
    (["--decode-mode", "fast"], "--decode-mode 'fast'"),
    (["--tp", "0"], "both count processes, at least 1"),
    (["--scaling"], "--dp 1 --tp 1 is one process"),
    (["--dp", "-1"], "both count processes, at least 1"),
    (["--num-requests", "0"], "--num-requests 0 is not a positive number"),
    (["--dp", "2", "--num-requests", "1"], "1 request(s) leave some of the 2 replicas idle"),
    (["--output-len", "0"], "--output-len 0 is not a positive number"),
    (["--json", "--format", "csv"], "--json and --format csv ask for different formats"),
    (["--prompts", "prompts.txt", "--input-len", "64"], "--input-len sets the length of synthetic prompts"),
])
def test_bad_flags(tiny_llama, args, message):
    assert message in one_line_error(bench(tiny_llama, *args), code=2)


def test_a_worker_silent_beyond_the_timeout_ends_the_run(tiny_llama, monkeypatch):
    monkeypatch.setenv("LOCALAI_BENCH_WORKER_TIMEOUT", "0.2")  # less than it takes to import torch
    result = bench(tiny_llama, "--num-requests", 1, "--input-len", 8, "--output-len", 5, "--warmup", 0)
    assert result.exit_code == 1 and result.stdout == ""
    line = result.stderr.strip().splitlines()[-1]  # after the "benchmarking ..." note
    assert line.startswith("error: benchmark replica 0 (pid ") and "said nothing for 0.2 s while loading" in line


def test_graph_decoding_needs_a_gpu(tiny_llama):
    assert "needs a CUDA GPU" in one_line_error(bench(tiny_llama, "--decode-mode", "graphs"))


def test_unknown_model(localai_home):
    assert "unknown model" in one_line_error(bench("no-such-model-alias"))


def test_emit_vllm_prints_commands_without_running(tiny_llama):
    result = bench(tiny_llama, "--dp", 2, "--input-len", 64, "--output-len", 32, "--emit", "vllm")
    assert result.exit_code == 0, result.stderr
    assert "vllm serve" in result.stdout and "--data-parallel-size 2" in result.stdout
    assert "vllm bench serve" in result.stdout and "--random-input-len 64" in result.stdout
    data = json.loads(bench(tiny_llama, "--emit", "vllm", "--format", "json").stdout)
    assert set(data) == {"model", "serve", "bench", "notes"}
    assert json.loads(bench(tiny_llama, "--emit", "vllm", "--json", "--format", "json").stdout) == data


def test_tp_shards_by_key_value_group():
    assert even_ranges(3, 2) == [range(0, 2), range(2, 3)]  # SmolLM2-135M: 3 kv heads over 2 ranks
    check_shardable("llama", 3, 2, "none")
    with pytest.raises(LocalaiError, match="more than the model's 3 key/value heads"):
        check_shardable("llama", 3, 4, "none")
    with pytest.raises(LocalaiError, match="unquantized"):
        check_shardable("qwen3", 3, 2, "turboquant")
    with pytest.raises(LocalaiError, match="not .gpt2."):
        check_shardable("gpt2", 12, 2, "none")


def test_bench_help_lists_run_and_compare():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "compare" in result.stdout and "run" in result.stdout


def test_sigterm_stops_the_run_and_its_workers(tiny_llama, tmp_path):
    """A terminated bench (a scheduler's kill, a closed session) stops its replica processes too."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from cli_helpers import REPO_ROOT

    env = dict(os.environ, LOCALAI_HOME=str(tmp_path / "home"))
    process = subprocess.Popen([sys.executable, "-m", "localai", "--device", "cpu", "bench", "run", str(tiny_llama),
                                "--dp", "2", "--num-requests", "2000", "--input-len", "16", "--output-len", "64"],
                               env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = parent.children()
    assert len(workers) == 2, process.stderr.read() if process.poll() is not None else "workers never started"
    time.sleep(2)  # let them load and start generating
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and stdout == ""
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []


def test_ctrl_c_after_a_run_finished_writes_that_run_and_exits_130(tiny_llama, tmp_path, monkeypatch):
    """Ctrl-C during the scaling baseline: the data-parallel run that had finished is the report."""
    from localai.bench import runner as bench_runner

    real_run_dp, calls = bench_runner.run_dp, []

    def run_dp_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the baseline
            raise KeyboardInterrupt
        return real_run_dp(*args, **kwargs)

    monkeypatch.setattr(bench_runner, "run_dp", run_dp_then_ctrl_c)
    out = tmp_path / "partial.json"
    result = bench(tiny_llama, "--dp", "2", "--scaling", "--num-requests", 4, "--input-len", 8, "--output-len", 4,
                   "--json", "-o", out)
    assert result.exit_code == 130
    assert "the report holds the 1 run(s) that finished" in result.stderr
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and [run["name"] for run in report["runs"]] == ["dp2"]
    assert "scaling" not in report


def test_ctrl_c_before_any_run_finished_writes_nothing(tiny_llama, tmp_path, monkeypatch):
    from localai.bench import runner as bench_runner

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_runner, "run_dp", ctrl_c)
    out = tmp_path / "none.json"
    result = bench(tiny_llama, "--dp", "2", "--num-requests", 4, "--json", "-o", out)
    assert result.exit_code == 130 and not out.exists()
