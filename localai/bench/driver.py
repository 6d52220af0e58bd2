"""Timed generation through the localai engine: every output token stamped as it appears.

The engine's events carry times relative to the start of its run (`elapsed`); tokens of one
engine step share one `elapsed`. The driver turns them into absolute `time.perf_counter`
times (comparable across processes) with one offset taken at the first event, and recovers
each request's admission (the moment it got a batch slot) from the documented relation
tokens_per_second = generated tokens / seconds since the request entered the batch.
"""

from __future__ import annotations

import time

from localai.bench.metrics import RequestTrace


def make_requests(prompts: list[list[int]], request_ids: list[int], output_len: int) -> list:
    """Greedy requests that always produce `output_len` tokens (EOS masked until then, like ignore_eos)."""
    from localai.engine.request import Request, SamplingParams

    params = SamplingParams(max_new_tokens=output_len, min_new_tokens=output_len, temperature=0.0)
    return [Request(prompt_ids=list(p), params=params, id=rid) for p, rid in zip(prompts, request_ids)]


def plan(engine, prompts: list[list[int]], output_len: int, batch_size: int | None):
    """The engine's memory plan (batch size, context) for this workload; allocates the cache once."""
    requests = make_requests(prompts, list(range(len(prompts))), output_len)
    memory_plan = engine.plan_for(requests, batch_size)
    engine.prepare(memory_plan)
    return memory_plan


def run_requests(engine, prompts: list[list[int]], request_ids: list[int], output_len: int,
                 memory_plan) -> list[RequestTrace]:
    """Run all requests with continuous batching under `memory_plan`; one trace per request."""
    from localai.engine.api import stream_generate

    requests = make_requests(prompts, request_ids, output_len)
    traces = {rid: RequestTrace(rid, len(p), 0.0) for rid, p in zip(request_ids, prompts)}
    offset = None
    for event in stream_generate(engine, requests, plan=memory_plan):
        if offset is None:
            offset = time.perf_counter() - event.elapsed
        trace = traces[event.request_id]
        at = offset + event.elapsed
        if not trace.token_times:
            trace.admitted = at - event.generated_tokens / event.tokens_per_second
        trace.token_times.extend([at] * len(event.token_ids))
        trace.token_ids.extend(event.token_ids)
    return [traces[rid] for rid in request_ids]
