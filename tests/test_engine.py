"""The engine against transformers: greedy equality, continuous batching, sampling, stops, OOM back-off."""

from __future__ import annotations

import pytest
import torch

from engine_helpers import PROMPTS, fixed_length, load, reference_ids
from localai.engine.api import Engine, generate_batch, stream_generate
from localai.engine.request import Request, SamplingParams
from localai.errors import LocalaiError


@pytest.fixture(scope="module")
def llama_engine(tiny_llama):
    return Engine(*load(tiny_llama))


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen3"])
@pytest.mark.parametrize("lean", [True, False])
def test_greedy_matches_transformers_token_for_token(family, lean, request):
    folder = request.getfixturevalue(family)
    engine = Engine(*load(folder), lean=lean)
    assert engine.runner.kind == ("lean" if lean else "transformers")
    results = generate_batch(engine, fixed_length(engine, PROMPTS, 24), batch_size=3)
    assert [r.token_ids for r in results] == reference_ids(folder, PROMPTS, 24)


def test_turboquant_checkpoint_runs_through_the_lean_engine(tiny_llama, tmp_path):
    from localai.quant.pipeline import QuantizeOptions, quantize

    quantize(tiny_llama, tmp_path / "tq", QuantizeOptions(use_calib=False))
    engine = Engine(*load(tmp_path / "tq"))
    layer = engine.runner.model.layers[0]
    assert engine.runner.kind == "lean" and type(layer.qkv.parts[0]).__name__ == "TurboLinear"
    assert layer.qkv.turbo and layer.gate_up.turbo  # one rotation and one kernel call per group
    results = generate_batch(engine, fixed_length(engine, PROMPTS[:3], 12), batch_size=3)
    assert [r.token_ids for r in results] == reference_ids(tmp_path / "tq", PROMPTS[:3], 12)


def test_a_checkpoint_with_a_quantized_head_runs_through_the_lean_engine(tiny_qwen3, tmp_path):
    """quantize --quantize-head on a model whose head was tied to its embedding: the head is a
    TurboLinear (no `weight`), the embedding stays a plain tensor."""
    from localai.quant.pipeline import QuantizeOptions, quantize

    quantize(tiny_qwen3, tmp_path / "tq-head", QuantizeOptions(use_calib=False, quantize_head=True))
    engine = Engine(*load(tmp_path / "tq-head"))
    assert engine.runner.kind == "lean" and engine.runner.model.head.turbo
    assert not engine.runner.model.tied_head_packs
    results = generate_batch(engine, fixed_length(engine, PROMPTS[:3], 12), batch_size=3)
    assert [r.token_ids for r in results] == reference_ids(tmp_path / "tq-head", PROMPTS[:3], 12)


def test_qwen3_lean_forward_uses_q_k_norms_and_the_tied_embedding(tiny_qwen3):
    engine = Engine(*load(tiny_qwen3))
    assert engine.runner.kind == "lean"
    layer = engine.runner.model.layers[0]
    assert layer.q_norm is not None and layer.k_norm is not None
    assert not engine.model.get_input_embeddings().weight.is_meta  # lookups still read the embedding


def test_on_the_cpu_few_row_steps_stream_the_plain_weight_and_batches_pack_it(tiny_llama):
    """Batch 1 reads the fused row-major weight (native kernel); a plan of 4+ rows moves it into
    oneDNN's layout for good, the modules keep meta placeholders, and the answers do not change."""
    from localai.engine.sizing import tensor_bytes
    from localai.kernels import cpu as cpu_kernels

    model, tokenizer = load(tiny_llama)
    before = tensor_bytes(model)
    engine = Engine(model, tokenizer)
    qkv = engine.runner.model.layers[0].qkv
    assert qkv.packed is None and qkv.weight is not None
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.data_ptr() == qkv.weight.data_ptr()  # a row slice of the fused weight
    assert engine.model_bytes == before
    x = torch.randn(2, qkv.weight.shape[1])
    if cpu_kernels.native_library() is not None:
        assert torch.allclose(cpu_kernels.dense_matmul(x, qkv.weight), x @ qkv.weight.T, atol=1e-5)
    one_at_a_time = [r.token_ids for r in generate_batch(engine, fixed_length(engine, PROMPTS[:4], 6), batch_size=1)]
    batched = [r.token_ids for r in generate_batch(engine, fixed_length(engine, PROMPTS[:4], 6), batch_size=4)]
    assert batched == one_at_a_time
    if qkv.packed is None:
        pytest.skip("this torch build has no oneDNN linear")
    assert qkv.weight is None and q_proj.weight.is_meta
    again = [r.token_ids for r in generate_batch(engine, fixed_length(engine, PROMPTS[:4], 6), batch_size=1)]
    assert again == one_at_a_time  # few rows on packed weights: padded up to 4


def test_continuous_batching_returns_every_request_once_independent_of_batch_size(llama_engine):
    lengths = [3, 17, 1, 9, 30, 5, 12, 2]
    prompts = (PROMPTS * 2)[:len(lengths)]

    def run(batch, continuous=True):
        requests = [llama_engine.request(p, chat=False, params=SamplingParams(max_new_tokens=n, min_new_tokens=n))
                    for p, n in zip(prompts, lengths)]
        events = list(stream_generate(llama_engine, requests, batch_size=batch, continuous=continuous))
        finished = [e.index for e in events if e.finished]
        assert sorted(finished) == list(range(len(lengths)))  # each exactly once
        return generate_batch(llama_engine, requests, batch_size=batch, continuous=continuous)

    reference = [r.token_ids for r in run(1)]
    assert [len(ids) for ids in reference] == lengths
    for batch in (2, 3, 8):
        assert [r.token_ids for r in run(batch)] == reference
    assert [r.token_ids for r in run(3, continuous=False)] == reference


def test_events_stream_tokens_text_and_counters(llama_engine):
    request = llama_engine.request("Hello world", chat=False, params=SamplingParams(max_new_tokens=6))
    events = list(stream_generate(llama_engine, [request]))
    assert len(events) == 6
    assert [e.generated_tokens for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.finished for e in events] == [False] * 5 + [True]
    assert events[-1].finish_reason == "length"
    last = events[-1]
    assert last.prompt_tokens == len(request.prompt_ids)
    assert last.time_to_first_token is not None and last.elapsed >= last.time_to_first_token
    assert last.tokens_per_second > 0 and last.throughput > 0 and last.peak_memory > 0
    text = "".join(e.text for e in events)
    ids = [t for e in events for t in e.token_ids]
    assert text == llama_engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_sampling_is_reproducible_per_seed_whatever_shares_the_batch(llama_engine):
    def sampled(seed, prompt="Hello world"):
        return llama_engine.request(prompt, chat=False, params=SamplingParams(
            max_new_tokens=12, min_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, seed=seed))

    alone = generate_batch(llama_engine, [sampled(7)])[0].token_ids
    again = generate_batch(llama_engine, [sampled(7)])[0].token_ids
    crowd = generate_batch(llama_engine, [sampled(1, "abc"), sampled(7), sampled(2, "0123")], batch_size=3)
    other = generate_batch(llama_engine, [sampled(8)])[0].token_ids
    assert alone == again == crowd[1].token_ids
    assert other != alone


def test_stop_string_cuts_the_text_and_ends_the_request(llama_engine):
    greedy = generate_batch(llama_engine, fixed_length(llama_engine, ["Hello world"], 16))[0]
    text = greedy.text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip() and stop in text
    request = llama_engine.request("Hello world", chat=False, params=SamplingParams(
        max_new_tokens=16, min_new_tokens=16, stop=(stop,)))
    events = list(stream_generate(llama_engine, [request]))
    result = "".join(e.text for e in events)
    assert result == text[:text.index(stop)]
    assert events[-1].finish_reason == "stop"
    assert len(events) < 16


def test_end_of_sequence_token_finishes_with_stop(tiny_llama):
    engine = Engine(*load(tiny_llama))
    ids = generate_batch(engine, fixed_length(engine, ["Hello world"], 8))[0].token_ids
    eos = next(t for i, t in enumerate(ids) if i >= 2 and t not in ids[:i])
    engine.eos_ids = {eos}
    result = generate_batch(engine, [engine.request("Hello world", chat=False,
                                                    params=SamplingParams(max_new_tokens=8))])[0]
    assert result.token_ids == ids[:ids.index(eos) + 1]
    assert result.finish_reason == "stop"
    masked = generate_batch(engine, fixed_length(engine, ["Hello world"], 8))[0]
    assert masked.finish_reason == "length" and len(masked.token_ids) == 8


class FakeAllocatorLimit:
    """Wraps a runner: any forward over more than `limit` rows raises torch.OutOfMemoryError."""

    def __init__(self, runner, limit: int):
        self.runner, self.limit, self.refusals = runner, limit, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def _check(self, tokens):
        if tokens.shape[0] > self.limit:
            self.refusals += 1
            raise torch.OutOfMemoryError(f"fake allocator limit: {tokens.shape[0]} rows > {self.limit}")

    def prefill(self, tokens, *args, **kwargs):
        self._check(tokens)
        return self.runner.prefill(tokens, *args, **kwargs)

    def decode(self, tokens, *args, **kwargs):
        self._check(tokens)
        return self.runner.decode(tokens, *args, **kwargs)


def test_static_batches_keep_finished_rows_and_continuous_batching_refills_them(tiny_llama):
    engine = Engine(*load(tiny_llama))
    recorder = FakeAllocatorLimit(engine.runner, limit=10**6)
    engine.runner = recorder
    decoded_rows = []
    plain_decode = recorder.decode
    recorder.decode = lambda tokens, *args: decoded_rows.append(tokens.shape[0]) or plain_decode(tokens, *args)
    lengths = [2, 6, 3]

    def run(continuous):
        decoded_rows.clear()
        requests = [engine.request(p, chat=False, params=SamplingParams(max_new_tokens=n, min_new_tokens=n))
                    for p, n in zip(PROMPTS, lengths)]
        results = generate_batch(engine, requests, batch_size=2, continuous=continuous)
        return [len(r.token_ids) for r in results], list(decoded_rows)

    assert run(continuous=False) == (lengths, [2] * 5 + [1] * 2)  # [2, 6] together, then [3] alone
    assert run(continuous=True) == (lengths, [2, 2, 2, 1, 1])  # 3 takes the row 2 frees right away


@pytest.mark.parametrize("lean", [True, False])
def test_out_of_memory_halves_the_batch_and_loses_or_repeats_nothing(tiny_llama, lean):
    engine = Engine(*load(tiny_llama), lean=lean)
    lengths = [5, 11, 3, 8, 14, 6, 9, 4]
    prompts = (PROMPTS * 2)[:len(lengths)]

    def requests():
        return [engine.request(p, chat=False, params=SamplingParams(max_new_tokens=n, min_new_tokens=n))
                for p, n in zip(prompts, lengths)]

    reference = [r.token_ids for r in generate_batch(engine, requests(), batch_size=8)]
    notices = []
    engine.notice = notices.append
    limited = FakeAllocatorLimit(engine.runner, limit=3)
    engine.runner = limited
    events = list(stream_generate(engine, requests(), batch_size=8))
    assert limited.refusals >= 1 and any("out of memory" in n for n in notices)
    tokens = {}
    for event in events:
        tokens.setdefault(event.index, []).extend(event.token_ids)
    assert [tokens[i] for i in range(len(lengths))] == reference  # nothing lost, nothing repeated
    assert sorted(e.index for e in events if e.finished) == list(range(len(lengths)))
    if not lean:  # the transformers runner's per-slot caches: set-aside and finished ones are dropped
        assert limited.runner.caches and all(cache is None for cache in limited.runner.caches)


def test_out_of_memory_with_one_sequence_is_a_one_line_error(tiny_llama):
    engine = Engine(*load(tiny_llama))
    engine.runner = FakeAllocatorLimit(engine.runner, limit=0)
    with pytest.raises(LocalaiError, match="out of memory"):
        generate_batch(engine, fixed_length(engine, ["Hello"], 4))


def test_long_prompts_are_prefilled_in_chunks(tiny_llama):
    engine = Engine(*load(tiny_llama))
    prompt = " ".join(["The capital of France is Paris."] * 12)
    expected = generate_batch(engine, fixed_length(engine, [prompt], 8))[0].token_ids
    engine.prefill_tokens = 16
    assert len(engine.request(prompt, chat=False).prompt_ids) > 16
    assert generate_batch(engine, fixed_length(engine, [prompt, "abc"], 8), batch_size=2)[0].token_ids == expected


def test_bad_requests_are_refused(llama_engine):
    with pytest.raises(LocalaiError, match="empty"):
        list(stream_generate(llama_engine, [Request(prompt_ids=[])]))
    with pytest.raises(LocalaiError, match="context"):
        list(stream_generate(llama_engine, [Request(prompt_ids=[5] * 600)]))
    with pytest.raises(LocalaiError, match="temperature"):
        SamplingParams(temperature=-1).validate()


def test_chat_template_is_applied_when_the_tokenizer_has_one(llama_engine):
    tokenizer = llama_engine.tokenizer
    chat = llama_engine.request("Hi", system="Be brief.").prompt_ids
    text = tokenizer.decode(chat)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert llama_engine.request("Hi", chat=False).prompt_ids == tokenizer("Hi")["input_ids"]


def test_a_plan_that_cannot_hold_the_prompt_is_refused(llama_engine):
    request = llama_engine.request("The capital of France is Paris, and the capital of Italy is", chat=False)
    small = llama_engine.plan_for([llama_engine.request("Hi", chat=False)], max_ctx=4)
    with pytest.raises(LocalaiError, match="does not fit the plan's 4-token context"):
        generate_batch(llama_engine, [request], plan=small)
    with pytest.raises(LocalaiError, match="cannot hold a"):
        generate_batch(llama_engine, [request], max_ctx=5)


def test_one_stream_at_a_time_on_an_engine(llama_engine):
    params = SamplingParams(max_new_tokens=6, min_new_tokens=6)
    first = llama_engine.stream([llama_engine.request("Hello", chat=False, params=params)])
    next(first)
    with pytest.raises(LocalaiError, match="already generating"):
        next(llama_engine.stream([llama_engine.request("World", chat=False, params=params)]))
    assert sum(1 for _ in first) >= 1
    again = generate_batch(llama_engine, [llama_engine.request("World", chat=False, params=params)])  # free again
    assert len(again[0].token_ids) == 6


def test_a_second_engine_on_a_model_the_first_took_over_is_refused(tiny_llama):
    """A batched plan on the CPU moves the weights into the engine (meta placeholders stay)."""
    model, tokenizer = load(tiny_llama)
    engine = Engine(model, tokenizer)
    generate_batch(engine, fixed_length(engine, PROMPTS[:4], 2), batch_size=4)
    with pytest.raises(LocalaiError, match="taken over by another engine"):
        Engine(model, tokenizer)


def test_sliding_window_attention_matches_transformers(tmp_path_factory):
    """A Mistral-style model whose layers see only the last 4 positions: prompts and answers far
    longer than the window, decoded in one batch with a finished answer's slot reused."""
    from tiny_models import build_model

    folder = build_model(tmp_path_factory.mktemp("models") / "tiny-mistral", family="mistral")
    engine = Engine(*load(folder))
    assert engine.runner.kind == "lean" and engine.runner.model.windows == {4}
    results = generate_batch(engine, fixed_length(engine, PROMPTS, 16), batch_size=3)
    assert [r.token_ids for r in results] == reference_ids(folder, PROMPTS, 16)


@pytest.mark.parametrize("family, tied", [("tiny_qwen3", True), ("tiny_llama", False)])
def test_a_cpu_plan_keeps_room_for_the_packed_copy_of_a_tied_head(family, tied, request, monkeypatch):
    """Batched CPU steps pack the weights for oneDNN: each packed copy replaces its weight, except a
    head tied to the embedding, which the embedding keeps: the plan must not hand that memory out."""
    import localai.engine.api as api

    engine = Engine(*load(request.getfixturevalue(family)))
    head = engine.runner.model.head.weight
    extra = head.numel() * head.element_size() if tied else 0
    monkeypatch.setattr(api, "memory_info", lambda device: (4 << 30, 8 << 30))
    plan = engine.plan_for([engine.request("Hi", chat=False)] * 64, batch_size=8)
    assert plan.available_bytes == (4 << 30) - extra
    assert plan.model_bytes == engine.model_bytes + extra
    engine.prepare(plan)  # batch 8: packs; the plan left room for what that added
    assert engine.runner.weight_bytes() >= extra and engine.runner.packing_bytes() == 0


def test_decode_speed_times_its_run_on_the_cache_the_warm_up_used(tiny_llama, monkeypatch):
    """A new cache means, on a GPU, capturing the decode step again: that must not happen inside the timed run."""
    from localai.engine.runners import LeanRunner
    from localai.evaluate import decode_speed

    allocations = []
    allocate = LeanRunner.allocate

    def counted(self, slots, max_ctx):
        allocations.append((slots, max_ctx))
        allocate(self, slots, max_ctx)

    monkeypatch.setattr(LeanRunner, "allocate", counted)
    speed = decode_speed(*load(tiny_llama), new_tokens=12)
    assert speed.tokens == 11 and len(allocations) == 1
