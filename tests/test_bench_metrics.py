"""Metric arithmetic of `localai bench` on hand-made timelines."""

import json
import math
import re

import pytest

from localai.bench import runner
from localai.bench.dp import Placement
from localai.bench.launcher import WorkerRun
from localai.bench.metrics import RequestTrace, over_repeats, percentile, step_split, summarize
from localai.bench.model import ModelFacts
from localai.bench.worker import WorkerSpec
from localai.bench.workload import Workload, check_context, random_workload, read_prompts_file, split
from localai.errors import LocalaiError


def batch_of_two():
    # two requests admitted at t=0, prefilled together (first token at 1.0), then decode steps at 1.5, 2.0, 3.0
    return [RequestTrace(0, 10, 0.0, [1.0, 1.5, 2.0, 3.0]), RequestTrace(1, 6, 0.0, [1.0, 1.5, 2.0, 3.0])]


def test_request_latencies_follow_vllm_definitions():
    trace = RequestTrace(0, 10, 0.5, [1.0, 1.5, 2.0, 3.0])
    assert trace.ttft == pytest.approx(0.5)
    assert trace.e2el == pytest.approx(2.5)
    assert trace.itls == pytest.approx([0.5, 0.5, 1.0])
    assert trace.tpot == pytest.approx((2.5 - 0.5) / 3)  # (latency - ttft) / (output - 1)
    assert RequestTrace(1, 4, 0.0, [0.2]).tpot is None


def test_summary_throughputs_count_the_right_tokens():
    row = summarize([batch_of_two()])
    assert row["duration_s"] == pytest.approx(3.0)
    assert row["total_input_tokens"] == 16 and row["total_output_tokens"] == 8
    assert row["output_throughput"] == pytest.approx(8 / 3)
    assert row["total_token_throughput"] == pytest.approx((16 + 8) / 3)
    assert row["request_throughput"] == pytest.approx(2 / 3)
    assert row["mean_ttft_ms"] == pytest.approx(1000)
    assert row["mean_itl_ms"] == pytest.approx(2000 / 3)
    assert row["p99_e2el_ms"] == pytest.approx(3000)


def test_prefill_and_decode_steps_are_told_apart():
    prefill_s, prefill_tokens, decode_s, decode_tokens = step_split(batch_of_two())
    assert (prefill_s, prefill_tokens) == (pytest.approx(1.0), 16)
    assert (decode_s, decode_tokens) == (pytest.approx(2.0), 6)
    row = summarize([batch_of_two()])
    assert row["prefill_throughput"] == pytest.approx(16.0)
    assert row["decode_throughput"] == pytest.approx(3.0)


def test_replicas_aggregate_over_first_start_to_last_finish():
    late = [RequestTrace(2, 10, 1.0, [2.0, 5.0])]  # a second replica that finishes last
    row = summarize([batch_of_two(), late], peak_memory_mb=[100.0, 250.0])
    assert row["duration_s"] == pytest.approx(5.0)
    assert row["total_token_throughput"] == pytest.approx((16 + 8 + 10 + 2) / 5)
    assert row["completed"] == 3
    assert row["peak_memory_mb"] == 250.0
    # step rates are per replica, then summed: replica 2 prefills 10 tokens in 1 s and decodes 1 token in 3 s
    assert row["prefill_throughput"] == pytest.approx(16.0 + 10.0)
    assert row["decode_throughput"] == pytest.approx(3.0 + 1 / 3)


def test_one_output_token_has_no_decode_figures():
    row = summarize([[RequestTrace(0, 10, 0.0, [0.5]), RequestTrace(1, 10, 0.0, [0.5])]])
    assert row["prefill_throughput"] == pytest.approx(40.0) and row["output_throughput"] == pytest.approx(4.0)
    assert row["decode_throughput"] is None  # no decode step ran: not 0 tokens/s
    assert row["mean_tpot_ms"] is None and row["mean_itl_ms"] is None  # undefined for one token
    assert row["mean_e2el_ms"] == row["mean_ttft_ms"] == pytest.approx(500)


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(7.6)
    assert percentile(values, 99) == pytest.approx(9.76)
    assert percentile([5.0], 99) == 5.0


def test_repeats_give_mean_and_sample_sd():
    mean, sd = over_repeats([{"x": 1.0, "name": "a"}, {"x": 3.0, "name": "a"}])
    assert mean["x"] == 2.0 and sd["x"] == pytest.approx(math.sqrt(2))
    assert mean["name"] == "a" and sd["name"] is None


def test_summary_without_tokens_is_an_error():
    with pytest.raises(ValueError):
        summarize([[RequestTrace(0, 3, 0.0, [])]])


def test_random_workload_is_seeded_and_avoids_special_tokens():
    a = random_workload(50, {0, 1, 2}, num_requests=4, input_len=7, output_len=3, seed=1)
    b = random_workload(50, {0, 1, 2}, num_requests=4, input_len=7, output_len=3, seed=1)
    c = random_workload(50, {0, 1, 2}, num_requests=4, input_len=7, output_len=3, seed=2)
    assert a.prompts == b.prompts != c.prompts
    assert all(len(p) == 7 and min(p) >= 3 for p in a.prompts)
    assert Workload.from_dict(a.to_dict()) == a


def test_workload_lengths_are_checked():
    with pytest.raises(LocalaiError, match="--num-requests"):
        random_workload(50, set(), num_requests=0, input_len=7, output_len=3, seed=1)
    work = random_workload(50, set(), num_requests=1, input_len=100, output_len=30, seed=1)
    check_context(work, 130)
    with pytest.raises(LocalaiError, match="beyond the model's context of 128"):
        check_context(work, 128)


def test_prompts_file_reads_text_and_json_lines(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes('\ufeff{"prompt": "caf\u00e9"}\r\n\n  plain text  \n{"prompt": "", "id": 3}\n'.encode("utf-8"))
    assert read_prompts_file(path) == ["caf\u00e9", "plain text", ""]


def test_every_line_of_a_txt_prompts_file_is_plain_text(tmp_path):
    path = tmp_path / "questions.TXT"
    path.write_text('{"a": 1} -- what does this JSON mean?\n{x} is a placeholder. Explain.\n')
    assert read_prompts_file(path) == ['{"a": 1} -- what does this JSON mean?', "{x} is a placeholder. Explain."]


def test_a_prompt_holding_a_unicode_line_separator_stays_one_prompt(tmp_path):
    path = tmp_path / "prompts.jsonl"
    text = "one\u2028two\x85three\x0cfour"
    path.write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\n" + text + "\r\nlast\rbut one\n",
                    encoding="utf-8")
    assert read_prompts_file(path) == [text, text, "last", "but one"]


@pytest.mark.parametrize("content, message", [
    (b'ok\n{"prompt": null}\n', "prompts.jsonl:2: not a JSON object with a \"prompt\" string"),
    (b'{"prompt": 5}\n', "prompts.jsonl:1: not a JSON object"),
    (b'{"text": "hi"}\n', "prompts.jsonl:1: not a JSON object"),
    (b'{oops\n', "prompts.jsonl:1: not a JSON object"),
    (b"caf\xe9\n", "is not UTF-8 text (invalid continuation byte at byte 3)"),
    (b"\n  \n", "has no prompts"),
])
def test_bad_prompts_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    with pytest.raises(LocalaiError, match=re.escape(message)):
        read_prompts_file(path)


def test_a_prompts_path_that_is_no_file_is_named_as_what_it_is(tmp_path):
    with pytest.raises(LocalaiError, match=re.escape(f"cannot read {tmp_path / 'absent.txt'}: no such file")):
        read_prompts_file(tmp_path / "absent.txt")
    with pytest.raises(LocalaiError, match=re.escape(f"cannot read {tmp_path}: it is a folder")):
        read_prompts_file(tmp_path)


def test_requests_split_evenly_in_order():
    assert split(5, 2) == [[0, 1, 2], [3, 4]]
    assert split(2, 3) == [[0], [1], []]


def one_second_runs(calls: list, mode: str):
    """A stand-in for run_dp / run_tp whose every process finishes all of its requests in one second
    (one batch holds them all), so its throughput grows with the requests it is given."""
    def launch(model, workload, places, request_ids, **options):
        calls.append({"mode": mode, "processes": len(places), "requests": list(request_ids),
                      "decode_mode": options["decode_mode"]})
        shares = [list(request_ids)] * len(places) if mode == "tp" else split(len(request_ids), len(places))
        runs = []
        for share in shares:
            ids = [request_ids[i] for i in share] if mode == "dp" else share
            traces = [RequestTrace(i, 4, 0.0, [0.5, 1.0]).to_dict() for i in ids]
            spec = WorkerSpec(model=model, device="cpu", workload={}, request_ids=ids, batch_size=None, warmup=0,
                              repeats=1)
            ready = {"batch_size": len(ids), "engine": "lean", "decode_mode": options["decode_mode"]}
            runs.append(WorkerRun(spec, ready, [{"traces": traces, "peak_memory_mb": 1.0}]))
        return runs
    return launch


def scaling_plan(dp: int, tp: int, compare: bool = False) -> runner.BenchPlan:
    facts = ModelFacts("m", "LlamaForCausalLM", "llama", 100, set(), 512, 4, 2, "none")
    places = [Placement("cpu", f"cpu core {i}", {}, [i]) for i in range(max(dp, tp))]
    return runner.BenchPlan(facts=facts, workload=random_workload(100, set(), 4, 4, 2, 0), device="cpu",
                            places=places, dp=dp, tp=tp, compare=compare, scaling=True)


def fake_launchers(monkeypatch) -> list:
    """run_dp and run_tp replaced by one_second_runs; returns the list of their calls."""
    calls = []
    monkeypatch.setattr(runner, "run_dp", one_second_runs(calls, "dp"))
    monkeypatch.setattr(runner, "run_tp", one_second_runs(calls, "tp"))
    return calls


@pytest.mark.parametrize("dp, tp, baseline, requests, speedup", [
    (2, 1, "dp1-alone", 2, 2.0),  # each replica's share alone: running side by side costs nothing here
    (1, 2, "tp1-alone", 4, 1.0),  # the whole workload unsharded: the ranks split the same work, no faster
])
def test_scaling_baseline_does_the_parallel_processes_work(monkeypatch, dp, tp, baseline, requests, speedup):
    calls = fake_launchers(monkeypatch)
    result = runner.execute(scaling_plan(dp, tp))
    parallel, alone = calls
    assert alone["processes"] == 1 and len(alone["requests"]) == requests
    assert alone["decode_mode"] == parallel["decode_mode"]
    assert result["runs"][1]["name"] == baseline and result["runs"][1]["metrics"]["completed"] == requests
    [entry] = result["scaling"]
    assert entry["baseline"] == baseline and entry["speedup"] == pytest.approx(speedup)


def test_compared_runs_each_scale_against_their_own_baseline(monkeypatch):
    """--compare dp,tp --scaling: the TP run had no scaling figure, only the DP run had one."""
    calls = fake_launchers(monkeypatch)
    result = runner.execute(scaling_plan(2, 2, compare=True))
    assert [run["name"] for run in result["runs"]] == ["dp2", "tp2", "dp1-alone", "tp1-alone"]
    assert [(c["mode"], c["processes"], len(c["requests"])) for c in calls] == [
        ("dp", 2, 4), ("tp", 2, 4), ("dp", 1, 2), ("dp", 1, 4)]  # DP's baseline: one share; TP's: everything
    assert {c["decode_mode"] for c in calls} == {"eager"}
    assert [(s["run"], s["baseline"], s["processes"]) for s in result["scaling"]] == [
        ("dp2", "dp1-alone", 2), ("tp2", "tp1-alone", 2)]
    assert [s["speedup"] for s in result["scaling"]] == pytest.approx([2.0, 1.0])
    assert [s["efficiency"] for s in result["scaling"]] == pytest.approx([1.0, 0.5])
    assert result["comparison"]["greedy_outputs_match"] is True


def test_compared_runs_on_one_device_share_their_identical_baseline(monkeypatch):
    """On one device DP's one share is every request, as TP's baseline: the same run, made once."""
    calls = fake_launchers(monkeypatch)
    result = runner.execute(scaling_plan(1, 1, compare=True))
    assert [run["name"] for run in result["runs"]] == ["dp1", "tp1", "dp1-alone"] and len(calls) == 3
    assert [(s["run"], s["baseline"]) for s in result["scaling"]] == [("dp1", "dp1-alone"), ("tp1", "dp1-alone")]
