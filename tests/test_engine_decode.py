"""Decoding steps: the KV cache, fixed-shape decoding in batch buckets, what torch.compile's step
reads, and the fall back to eager decoding."""

from __future__ import annotations

import pytest
import torch

from engine_helpers import PROMPTS, fixed_length, load
from localai.engine.api import Engine, generate_batch
from localai.engine.kv_cache import KVCache
from localai.engine.request import SamplingParams


def test_kv_cache_writes_reads_and_moves_slots():
    cache = KVCache(layers=2, slots=3, kv_heads=2, max_ctx=8, head_dim=4, dtype=torch.float32, device="cpu")
    k = torch.arange(2 * 2 * 1 * 4, dtype=torch.float32).view(2, 2, 1, 4)  # [B, kvh, T, D]
    positions = torch.tensor([[3], [5]])
    index = (((1 + torch.arange(2))[:, None, None] * 2 + torch.arange(2)[None, :, None]) * 8
             + positions[:, None, :]).reshape(-1)
    keys, values = cache.write_read(1, index, k, -k, slot0=1, batch=2, length=6)
    assert keys.shape == (2, 2, 6, 4)
    assert torch.equal(keys[0, :, 3], k[0, :, 0]) and torch.equal(values[1, :, 5], -k[1, :, 0])
    assert cache.keys[0].abs().sum() == 0  # other layers untouched
    cache.move(src=2, dst=0, length=6)
    assert torch.equal(cache.keys[1, 0, :, 5], k[1, :, 0])
    assert cache.nbytes == 2 * 2 * 3 * 2 * 8 * 4 * 4


def test_fixed_shape_decode_pads_to_buckets_and_matches_the_eager_step(tiny_llama):
    """The step CUDA graphs and torch.compile replay (full-cache masks, batch padded to a bucket,
    padding rows on the scratch position), run eagerly on the CPU."""
    from localai.engine.runners import PaddedStep

    engine = Engine(*load(tiny_llama))
    lengths = [4, 9, 2, 7, 12]
    prompts = PROMPTS[:len(lengths)]

    def run():
        requests = [engine.request(p, chat=False, params=SamplingParams(max_new_tokens=n, min_new_tokens=n))
                    for p, n in zip(prompts, lengths)]
        return [r.token_ids for r in generate_batch(engine, requests, batch_size=5, max_ctx=40)]

    expected = run()
    runner = engine.runner
    plain_allocate = runner.allocate

    def allocate(slots, max_ctx):
        plain_allocate(slots, max_ctx)
        runner._fixed_step = PaddedStep(runner._full_view_step, slots, max_ctx)

    runner.allocate, runner.slots = allocate, 0
    assert run() == expected
    assert runner._fixed_step.sizes == [1, 2, 4, 5]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen3"])
def test_the_compiled_step_reads_only_static_tensors_that_do_not_overlap(family, request):
    """What --compile hands torch.compile (traced here on the CPU, in bf16 as on a GPU): besides tokens
    and positions, only tensors marked static, none sharing memory with another. Overlapping inputs that
    are written (the KV cache beside views of it) become synthetic bases, which lose every static mark:
    the CUDA graphs of mode="reduce-overhead" are then skipped for mutated inputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(family)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    engine = Engine(model, AutoTokenizer.from_pretrained(folder))
    runner = engine.runner
    runner.decode_mode = "compile"
    runner.allocate(2, 16)  # marks the static tensors (compiles nothing until the first step)
    seen = []

    def record(graph, inputs):
        seen.append(inputs)
        return graph.forward

    tokens, start = torch.zeros(2, 1, dtype=torch.long), torch.full((2,), 15)
    with torch.inference_mode():
        torch.compile(runner._full_view_step, backend=record, dynamic=False)(tokens, start)
    torch._dynamo.reset()
    assert len(seen) == 1  # one graph: no break
    weights = [x for x in seen[0] if isinstance(x, torch.Tensor) and x is not tokens and x is not start]
    assert len(weights) == len(seen[0]) - 2
    assert all(torch._dynamo.utils.get_static_address_type(x) is not None for x in weights)
    spans = sorted((x.data_ptr(), x.data_ptr() + x.nbytes) for x in weights)
    assert all(end <= begin for (_, end), (begin, _) in zip(spans, spans[1:])), "inputs overlap in memory"


def test_compile_keeps_a_graph_for_every_batch_bucket(tiny_llama):
    from localai.engine.graphs import buckets

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    runner = Engine(*load(tiny_llama)).runner
    runner.decode_mode = "compile"
    with config.patch(**{name: 8}):  # dynamo's default; restored on exit
        runner.allocate(300, 8)  # buckets 1, 2, 4, ..., 256, 300
        assert len(buckets(300)) == 10 and getattr(config, name) == 10
    assert runner._fixed_step.sizes == buckets(300)
    torch._dynamo.reset()


def test_a_step_that_cannot_be_replayed_falls_back_to_eager_decoding(tiny_llama):
    engine = Engine(*load(tiny_llama))
    expected = generate_batch(engine, fixed_length(engine, PROMPTS[:2], 6), batch_size=2)
    notices = []
    engine.runner.notice = notices.append

    def broken_step(tokens, start):
        raise RuntimeError("operation not permitted when stream is capturing")

    engine.runner._fixed_step, engine.runner.decode_mode = broken_step, "graphs"
    engine.runner.allocate = lambda slots, max_ctx: None  # keep the broken step in place
    result = generate_batch(engine, fixed_length(engine, PROMPTS[:2], 6), batch_size=2)
    assert [r.token_ids for r in result] == [r.token_ids for r in expected]
    assert engine.runner.decode_mode == "eager" and any("decoding eagerly" in n for n in notices)
