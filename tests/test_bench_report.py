"""Bench reports, `bench compare` and `--emit vllm`, without running a model."""

import csv
import io
import json
import shlex
import subprocess

import pytest
from typer.testing import CliRunner

from localai.bench import report as report_module
from localai.bench.compare import compare, parse_threshold, render_comparison
from localai.bench.metrics import RequestTrace, summarize
from localai.bench.report import OLDER_SCHEMA, SCHEMA, build_report, load_report, render
from localai.bench.vllm import emit
from localai.cli import app
from localai.errors import LocalaiError, UsageError

runner = CliRunner()


def fake_report(speed: float = 1.0) -> dict:
    traces = [RequestTrace(i, 8, 0.0, [(0.1 + 0.05 * k) / speed for k in range(4)]) for i in range(2)]
    metrics = summarize([traces], [123.0])
    run = {"name": "dp2", "mode": "dp", "processes": 2, "placements": ["cpu core 0", "cpu core 1"], "batch_size": 1,
           "metrics": metrics, "metrics_sd": {k: 0.0 for k in metrics}, "repeats": [metrics],
           "replicas": [{"replica": i, "placement": f"cpu core {i}", **metrics} for i in range(2)]}
    env = {"command": "localai bench tiny --dp 2", "torch": "x", "gpus": []}
    workload = {"source": "random", "num_requests": 2, "input_len": 8, "output_len": 4, "seed": 0}
    settings = {"dp": 2, "tp": 1, "repeats": 1}
    result = {"runs": [run], "scaling": [{"run": "dp2", "baseline": "dp1-alone", "processes": 2, "metric": "m",
                                          "speedup": 1.9, "efficiency": 0.95}]}
    return build_report(env, {"name": "tiny"}, workload, settings, result)


def compared_report() -> dict:
    """dp2 and tp2 side by side, each with its own baseline and scaling entry."""
    report = fake_report()
    dp, dp_alone = report["runs"][0], {**report["runs"][0], "name": "dp1-alone", "replicas": []}
    tp, tp_alone = {**dp, "name": "tp2", "mode": "tp"}, {**dp_alone, "name": "tp1-alone", "mode": "tp"}
    report["runs"] = [dp, tp, dp_alone, tp_alone]
    report["scaling"] = [{"run": "dp2", "baseline": "dp1-alone", "processes": 2, "metric": "m", "speedup": 1.9,
                          "efficiency": 0.95},
                         {"run": "tp2", "baseline": "tp1-alone", "processes": 2, "metric": "m", "speedup": 1.2,
                          "efficiency": 0.6}]
    return report


def test_json_report_schema():
    report = json.loads(render(fake_report(), "json"))
    assert report["schema"] == SCHEMA
    assert {"environment", "model", "workload", "settings", "runs", "units"} <= set(report)
    metrics = report["runs"][0]["metrics"]
    for key in ("output_throughput", "total_token_throughput", "request_throughput", "prefill_throughput",
                "decode_throughput", "mean_ttft_ms", "median_tpot_ms", "p90_itl_ms", "p99_e2el_ms", "peak_memory_mb"):
        assert key in metrics
    assert "input + output" in report["units"]["total_token_throughput"]


def test_an_installed_copy_reports_no_commit_even_inside_another_repository(tmp_path, monkeypatch):
    project = tmp_path / "project"  # someone's clone, with a virtual environment inside it
    installed = project / ".venv" / "lib" / "site-packages" / "localai" / "bench" / "report.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    monkeypatch.setattr(report_module, "__file__", str(installed))
    assert report_module._git_commit() is None


def test_table_md_csv_jsonl_render_the_same_rows():
    report = fake_report()
    table = render(report, "table")
    assert table.splitlines()[0].startswith("run") and "dp2/1" in table and "scaling: dp2 is 1.90x" in table
    md = render(report, "md")
    assert md.startswith("| run |") and "|---|" in md
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [r["run"] for r in rows] == ["dp2", "dp2/0", "dp2/1"]
    assert float(rows[0]["output_throughput"]) == pytest.approx(report["runs"][0]["metrics"]["output_throughput"])
    lines = [json.loads(line) for line in render(report, "jsonl").splitlines()]
    assert [line["kind"] for line in lines] == ["run", "scaling"]
    assert lines[0]["run"]["name"] == "dp2" and all("environment" in line for line in lines)
    assert lines[1]["scaling"] == report["scaling"][0]


def test_every_format_shows_the_scaling_of_each_compared_run():
    report = compared_report()
    for fmt in ("table", "md"):
        text = render(report, fmt)
        assert "scaling: dp2 is 1.90x dp1-alone (95% of 2x)" in text
        assert "scaling: tp2 is 1.20x tp1-alone (60% of 2x)" in text
    assert json.loads(render(report, "json"))["scaling"] == report["scaling"]
    lines = [json.loads(line) for line in render(report, "jsonl").splitlines()]
    assert [line["scaling"] for line in lines if line["kind"] == "scaling"] == report["scaling"]
    rows = {row["run"]: row for row in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert (rows["dp2"]["scaling_baseline"], float(rows["dp2"]["scaling_speedup"])) == ("dp1-alone", 1.9)
    assert (rows["tp2"]["scaling_baseline"], float(rows["tp2"]["scaling_efficiency"])) == ("tp1-alone", 0.6)
    assert rows["dp1-alone"]["scaling_speedup"] == "" and rows["dp2/0"]["scaling_speedup"] == ""


def test_jsonl_carries_the_comparison():
    report = fake_report()
    report["comparison"] = {"dp": "dp2", "tp": "tp2", "metric": "total_token_throughput", "dp_over_tp": 1.4,
                            "interconnect": "cpu: gloo", "greedy_outputs_match": True}
    lines = [json.loads(line) for line in render(report, "jsonl").splitlines()]
    assert [line["kind"] for line in lines] == ["run", "scaling", "comparison"]
    assert lines[2]["comparison"] == report["comparison"]


def test_bench_compare_reads_an_older_report_and_says_so(tmp_path):
    """localai.bench/1 held one scaling entry as a dict; it is read as a list of one, with a note."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    older = fake_report()
    older.update(schema=OLDER_SCHEMA, scaling=older["scaling"][0])
    old.write_text(json.dumps(older))
    new.write_text(render(fake_report(), "json"))
    assert load_report(old)["scaling"] == fake_report()["scaling"]
    result = runner.invoke(app, ["bench", "compare", str(old), str(new)])
    assert result.exit_code == 0, result.stderr
    assert "note: A is an older report (localai.bench/1" in result.stdout and "note: B" not in result.stdout
    assert "dp2" in result.stdout and "0 change(s)" in result.stdout


def test_repeated_runs_show_mean_and_sd():
    report = fake_report()
    run = report["runs"][0]
    run["repeats"] = [run["metrics"], run["metrics"]]
    run["metrics_sd"]["output_throughput"] = 1.25
    assert f"{run['metrics']['output_throughput']:.1f} ± 1.2" in render(report, "table")
    top = next(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert float(top["sd_output_throughput"]) == 1.25 and float(top["sd_mean_ttft_ms"]) == 0.0


def test_csv_has_sd_columns_left_empty_for_a_single_repeat():
    rows = list(csv.DictReader(io.StringIO(render(fake_report(), "csv"))))
    assert "sd_total_token_throughput" in rows[0] and "sd_p99_e2el_ms" in rows[0]
    assert all(row["sd_total_token_throughput"] == "" for row in rows)


def test_unknown_format_is_an_error():
    with pytest.raises(LocalaiError, match="unknown format"):
        render(fake_report(), "xml")


def test_threshold_parsing():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("2.5") == pytest.approx(0.025)
    assert parse_threshold("0.5%") == pytest.approx(0.005)
    for bad, message in (("five", "not a number"), ("-5%", "out of range"), ("0.05", "ambiguous"), ("5%%", "not a number")):
        with pytest.raises(UsageError, match=message):
            parse_threshold(bad)


def test_a_metric_that_moves_from_zero_is_flagged():
    a, b = fake_report(1.0), fake_report(1.0)
    a["runs"][0]["metrics"]["output_throughput"] = 0.0
    row = next(r for r in compare(a, b, 0.05)["rows"] if r["metric"] == "output_throughput")
    assert row["change"] is None and row["verdict"] == "better"
    assert "from 0" in render_comparison(compare(a, b, 0.05))


def test_compare_flags_changes_beyond_threshold():
    a, b = fake_report(1.0), fake_report(1.10)  # B is 10% faster
    result = compare(a, b, 0.05)
    by_metric = {row["metric"]: row for row in result["rows"]}
    assert by_metric["output_throughput"]["verdict"] == "better"
    assert by_metric["output_throughput"]["change"] == pytest.approx(0.10)
    assert by_metric["mean_e2el_ms"]["verdict"] == "better"  # lower latency is better
    assert by_metric["peak_memory_mb"]["verdict"] == "same"
    assert compare(b, a, 0.05)["rows"][0]["verdict"] == "worse"
    assert compare(a, b, 0.20)["flagged"] == 0
    assert "BETTER" in render_comparison(result)


def test_compare_says_when_the_reports_are_not_like_for_like():
    a, b = fake_report(1.0), fake_report(1.0)
    assert compare(a, b, 0.05)["differences"] == []
    assert "note:" not in render_comparison(compare(a, b, 0.05))
    b["model"] = {**b.get("model", {}), "name": "other-model"}
    b["environment"] = {**b["environment"], "device": "cuda"}
    b["interrupted"] = True
    result = compare(a, b, 0.05)
    assert result["differences"] == ["model", "device", "an interrupted run"]
    assert "differ in model, device, an interrupted run" in render_comparison(result)


def test_compare_needs_a_common_run():
    other = fake_report()
    other["runs"][0]["name"] = "tp2"
    with pytest.raises(LocalaiError, match="share no run"):
        compare(fake_report(), other, 0.05)


def test_an_unusable_output_is_refused_before_the_benchmark_runs(tmp_path):
    result = runner.invoke(app, ["bench", "run", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "nope" / "r.json")])
    assert result.exit_code == 1 and "does not exist" in result.stderr  # not the model error: checked first


def test_bench_compare_command(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(render(fake_report(1.0), "json"))
    b.write_text(render(fake_report(0.8), "json"))
    result = runner.invoke(app, ["bench", "compare", str(a), str(b), "--threshold", "5%"])
    assert result.exit_code == 3, result.stderr  # B is slower: a regression fails a CI job
    assert "WORSE" in result.stdout and "worse than A" in result.stderr
    result = runner.invoke(app, ["bench", "compare", str(a), str(b), "--json", "-o", str(tmp_path / "c.json")])
    assert result.exit_code == 3 and json.loads((tmp_path / "c.json").read_text())["regressions"] > 0
    result = runner.invoke(app, ["bench", "compare", str(b), str(a)])  # A slower than B: only better
    assert result.exit_code == 0, result.stderr
    assert "BETTER" in result.stdout and "WORSE" not in result.stdout and result.stderr == ""


def _edited(edit) -> str:
    report = json.loads(render(fake_report(1.0), "json"))
    edit(report)
    return json.dumps(report)


@pytest.mark.parametrize("content, message", [
    (None, "not found"), ("{oops", "is not JSON"), ('{"runs": []}', "not a localai bench report"),
    (_edited(lambda r: r.update(schema="localai.bench/9")), "not a localai bench report"),
    (_edited(lambda r: r.pop("environment")), "not a localai bench report"),
    (_edited(lambda r: r.update(model=None)), "not a localai bench report"),
    (_edited(lambda r: r["runs"][0].pop("name")), "not a localai bench report"),
    (_edited(lambda r: r["runs"].append("x")), "not a localai bench report"),
    (_edited(lambda r: r["runs"][0]["metrics"].update(output_throughput="fast")), "not a localai bench report"),
])
def test_bench_compare_bad_reports(tmp_path, content, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(render(fake_report(), "json"))
    if content is not None:
        bad.write_text(content)
    result = runner.invoke(app, ["bench", "compare", str(good), str(bad)])
    assert result.exit_code == 1 and result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(LocalaiError, match=message):
        load_report(bad)


# flags of vLLM's own parsers: vllm/engine/arg_utils.py, vllm/entrypoints/openai/cli_args.py,
# vllm/entrypoints/cli/serve.py, vllm/benchmarks/serve.py, vllm/benchmarks/datasets/arg_utils.py
VLLM_SERVE_FLAGS = {"--data-parallel-size", "--data-parallel-size-local", "--data-parallel-address",
                    "--data-parallel-rpc-port", "--data-parallel-start-rank", "--data-parallel-backend",
                    "--tensor-parallel-size", "--headless", "--max-model-len", "--max-num-seqs", "--seed",
                    "--quantization"}
VLLM_BENCH_FLAGS = {"--backend", "--model", "--dataset-name", "--random-input-len", "--random-output-len",
                    "--random-range-ratio", "--ignore-eos", "--num-prompts", "--seed", "--request-rate",
                    "--max-concurrency", "--percentile-metrics", "--metric-percentiles", "--save-result",
                    "--result-filename", "--dataset-path", "--custom-output-len", "--skip-chat-template",
                    "--disable-shuffle"}  # the last four: vLLM's custom dataset (a prompts file)


def flags(line: str) -> set[str]:
    return {word for word in shlex.split(line) if word.startswith("--")}


def test_emitted_vllm_commands_use_real_flags():
    out = emit("HuggingFaceTB/SmolLM2-135M-Instruct", "none", 4, input_len=1024, output_len=512,
               num_prompts=1000, batch_size=64, seed=0)
    serve_lines = [line for lines in out["serve"].values() for line in lines]
    assert all(line.startswith("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct ") for line in serve_lines)
    assert all(flags(line) <= VLLM_SERVE_FLAGS for line in serve_lines)
    assert "--data-parallel-size 4" in out["serve"]["dp"][0]
    assert "--tensor-parallel-size 4" in out["serve"]["tp"][0]
    head, other = out["serve"]["dp_two_nodes"]
    assert "--data-parallel-size 8 --data-parallel-size-local 4" in head and "--headless" in other
    assert "--data-parallel-start-rank 4" in other and "--data-parallel-backend ray" in out["serve"]["dp_ray"][0]
    for line in out["bench"].values():
        assert line.startswith("vllm bench serve ") and flags(line) <= VLLM_BENCH_FLAGS
        assert "--random-input-len 1024 --random-output-len 512" in line and "--ignore-eos" in line
    assert "--max-concurrency 256" in out["bench"]["dp"]  # 64 per replica x 4 replicas


def test_emit_with_a_prompts_file_benchmarks_that_file_on_vllm():
    out = emit("HuggingFaceTB/SmolLM2-135M-Instruct", "none", 2, input_len=37, output_len=64, num_prompts=10,
               batch_size=8, seed=0, prompts_file="prompts.jsonl")
    for line in out["bench"].values():
        assert flags(line) <= VLLM_BENCH_FLAGS and "--random-input-len" not in line
        assert "--dataset-name custom --dataset-path prompts.jsonl --custom-output-len 64" in line
        assert "--skip-chat-template" in line  # localai sends the file's text as it is
    assert "JSON lines" in out["notes"][0] and "same lengths" not in " ".join(out["notes"])


def test_emit_notes_what_vllm_cannot_load():
    out = emit("./my-model", "turboquant", 2, 128, 128, 32, 8, 0)
    assert "cannot load" in out["notes"][0]
    assert all("--quantization" not in line for lines in out["serve"].values() for line in lines)
    nf4 = emit("./my-model", "bitsandbytes", 2, 128, 128, 32, 8, 0)
    assert "--quantization bitsandbytes" in nf4["serve"]["dp"][0]
    smollm2 = emit("HuggingFaceTB/SmolLM2-135M-Instruct", "none", 2, 128, 128, 32, 8, 0, num_heads=9)
    assert any("9 attention heads" in note for note in smollm2["notes"])


@pytest.mark.parametrize("fmt, as_json, output, expected", [
    (None, False, None, "table"),
    (None, False, "dp2.json", "json"),
    (None, False, "runs.JSONL", "jsonl"),
    (None, False, "runs.csv", "csv"),
    (None, False, "runs.md", "md"),
    (None, False, "runs.txt", "table"),
    ("md", False, "runs.json", "md"),  # --format wins over the file name
    (None, True, "runs.csv", "json"),
])
def test_the_report_format_follows_the_file_name_unless_asked_for(fmt, as_json, output, expected):
    from pathlib import Path

    from localai.bench.session import output_format

    assert output_format(fmt, as_json, Path(output) if output else None) == expected


def test_json_and_another_format_are_a_usage_error():
    from localai.bench.session import output_format
    from localai.errors import UsageError

    with pytest.raises(UsageError, match="ask for different formats"):
        output_format("csv", True)
