"""Metrics from per-request token timelines, named as vLLM's benchmarks name them.

A request's timeline is the moment it was admitted (it got a batch slot; vLLM's
`--max-concurrency` counts the same way) and the moment each output token was
available. All times come from one clock (`time.perf_counter`, system-wide on
Linux), so timelines from several worker processes can be merged.

Which tokens a figure counts:
  output_throughput       output tokens / s
  total_token_throughput  input + output tokens / s
  request_throughput      finished requests / s
  prefill_throughput      input tokens / s of prefill steps (summed over replicas)
  decode_throughput       output tokens / s of decode steps (summed over replicas)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)
UNITS = {
    "request_throughput": "requests/s",
    "output_throughput": "output tokens/s",
    "total_token_throughput": "input + output tokens/s",
    "prefill_throughput": "input tokens/s during prefill steps, summed over replicas",
    "decode_throughput": "output tokens/s during decode steps, summed over replicas",
    "ttft_ms": "time to first token, from admission",
    "tpot_ms": "(e2el - ttft) / (output tokens - 1), per request",
    "itl_ms": "every gap between consecutive tokens of a request",
    "e2el_ms": "admission to last token",
    "duration_s": "first admission to last token",
    "peak_memory_mb": "largest peak of any replica (CUDA allocator, or process RSS on CPU)",
}


@dataclass
class RequestTrace:
    """One request: when it was admitted and when each output token appeared (seconds)."""

    request_id: int
    input_len: int
    admitted: float
    token_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    @property
    def output_len(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.admitted

    @property
    def e2el(self) -> float:
        return self.token_times[-1] - self.admitted

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def tpot(self) -> float | None:
        if self.output_len < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_len - 1)

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "input_len": self.input_len, "admitted": self.admitted,
                "token_times": self.token_times, "token_ids": self.token_ids}

    @classmethod
    def from_dict(cls, data: dict) -> "RequestTrace":
        return cls(int(data["request_id"]), int(data["input_len"]), float(data["admitted"]),
                   [float(t) for t in data["token_times"]], [int(t) for t in data.get("token_ids", [])])


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, which vLLM uses)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe_ms(name: str, seconds: list[float]) -> dict:
    """mean / median / std / p90 / p99 of `seconds`, in milliseconds, as `mean_ttft_ms` etc."""
    if not seconds:
        return {f"{stat}_{name}_ms": None for stat in ("mean", "median", "std", "p90", "p99")}
    ms = [s * 1000 for s in seconds]
    row = {f"mean_{name}_ms": statistics.fmean(ms), f"median_{name}_ms": statistics.median(ms),
           f"std_{name}_ms": statistics.pstdev(ms)}
    for p in PERCENTILES[1:]:
        row[f"p{p}_{name}_ms"] = percentile(ms, p)
    return row


def step_split(traces: list[RequestTrace]) -> tuple[float, int, float, int]:
    """Split one replica's busy time into prefill and decode steps.

    Tokens produced by the same engine step share one timestamp. A step lasts from the
    previous step (or the first admission) to its timestamp; it is a prefill step when it
    produced some request's first token. Returns (prefill seconds, input tokens of the
    prefilled requests, decode seconds, tokens produced by decode steps).
    """
    first_token_inputs: dict[float, int] = {}
    tokens_at: dict[float, int] = {}
    for trace in traces:
        first_token_inputs[trace.token_times[0]] = first_token_inputs.get(trace.token_times[0], 0) + trace.input_len
        for t in trace.token_times:
            tokens_at[t] = tokens_at.get(t, 0) + 1
    prefill_s = decode_s = 0.0
    prefill_tokens = decode_tokens = 0
    previous = min(trace.admitted for trace in traces)
    for t in sorted(tokens_at):
        if t in first_token_inputs:
            prefill_s += t - previous
            prefill_tokens += first_token_inputs[t]
        else:
            decode_s += t - previous
            decode_tokens += tokens_at[t]
        previous = t
    return prefill_s, prefill_tokens, decode_s, decode_tokens


def step_throughputs(replica_traces: list[list[RequestTrace]]) -> dict:
    """Prefill and decode tokens/s, each replica's own rate summed; None where no replica ran such a
    step (with --output-len 1 there are no decode steps: "0 tokens/s" would read as stalled)."""
    prefill, decode = [], []
    for replica in replica_traces:
        replica = [t for t in replica if t.output_len > 0]
        if not replica:
            continue
        prefill_s, prefill_tokens, decode_s, decode_tokens = step_split(replica)
        if prefill_s > 0:
            prefill.append(prefill_tokens / prefill_s)
        if decode_s > 0:
            decode.append(decode_tokens / decode_s)
    return {"prefill_throughput": sum(prefill) if prefill else None,
            "decode_throughput": sum(decode) if decode else None}


def summarize(replica_traces: list[list[RequestTrace]], peak_memory_mb: list[float] | None = None) -> dict:
    """vLLM-named metrics for one timed run; `replica_traces` holds one list per replica."""
    traces = [t for replica in replica_traces for t in replica if t.output_len > 0]
    if not traces:
        raise ValueError("no request produced a token")
    start = min(t.admitted for t in traces)
    end = max(t.token_times[-1] for t in traces)
    duration = end - start
    total_input = sum(t.input_len for t in traces)
    total_output = sum(t.output_len for t in traces)
    row = {
        "completed": len(traces),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "duration_s": duration,
        "request_throughput": len(traces) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        **step_throughputs(replica_traces),
    }
    row.update(describe_ms("ttft", [t.ttft for t in traces]))
    row.update(describe_ms("tpot", [t.tpot for t in traces if t.tpot is not None]))
    row.update(describe_ms("itl", [gap for t in traces for gap in t.itls]))
    row.update(describe_ms("e2el", [t.e2el for t in traces]))
    row["peak_memory_mb"] = max(peak_memory_mb) if peak_memory_mb else None
    return row


def over_repeats(runs: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation of every numeric metric over repeated runs."""
    mean, sd = {}, {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        if len(values) != len(runs):
            mean[key], sd[key] = runs[0][key], None
            continue
        mean[key] = values[0] if len(set(values)) == 1 else statistics.fmean(values)
        sd[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd
