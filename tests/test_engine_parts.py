"""Engine parts on their own: sampling, sizing arithmetic, streamed detokenization, prompt input parsing."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from localai.engine.detokenize import TextStream
from localai.engine.inputs import parse_lines, read_prompts, seeded
from localai.engine.request import SamplingParams
from localai.engine.sampling import apply_repetition_penalty, new_generator, pick_tokens, warp
from localai.engine.sizing import GIB, MIB, ModelShape, plan_memory
from localai.errors import LocalaiError

# --- sampling ---------------------------------------------------------------------------------


def row(params, ids=(), generated=(), seed=0):
    return SimpleNamespace(params=params, ids=list(ids), generated=list(generated),
                           generator=None if params.greedy else new_generator(seed, "cpu"))


def test_greedy_picks_the_argmax_and_masks_eos_until_min_new_tokens():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    rows = [row(SamplingParams()), row(SamplingParams(min_new_tokens=2), generated=[7])]
    assert pick_tokens(logits, rows, eos_ids=[0]) == [1, 2]
    assert pick_tokens(logits, [row(SamplingParams()), row(SamplingParams())], eos_ids=[0]) == [1, 0]


def test_end_of_sequence_is_masked_for_the_whole_batch_in_one_write():
    """On a GPU every indexed write first copies its indices there and waits for the copy: one per step,
    not one per row (a benchmark masks EOS in every row at every step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountWrites(TorchDispatchMode):
        writes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default):
                self.writes += 1
            return func(*args, **(kwargs or {}))

    logits = torch.tensor([[0.0, 5.0, 1.0, 9.0]] * 8)
    rows = [row(SamplingParams(min_new_tokens=2 if b % 4 else 0)) for b in range(8)]
    with CountWrites() as counter:
        tokens = pick_tokens(logits.to(torch.bfloat16), rows, eos_ids=frozenset({3, 1}))
    assert tokens == [3, 2, 2, 2, 3, 2, 2, 2] and counter.writes == 1
    assert logits[0, 3] == 9.0  # the caller's logits are untouched


def test_a_temperature_too_small_to_divide_by_is_greedy():
    logits = torch.tensor([[0.0, 50.0, 49.0]])
    assert pick_tokens(logits, [row(SamplingParams(temperature=1e-39))], eos_ids=[]) == [1]


def test_top_k_top_p_min_p_keep_only_the_likely_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert (warp(logits, SamplingParams(temperature=1.0, top_k=2)) > 0).tolist() == [True, True, False, False]
    assert (warp(logits, SamplingParams(temperature=1.0, top_p=0.7)) > 0).tolist() == [True, True, False, False]
    assert (warp(logits, SamplingParams(temperature=1.0, top_p=0.9)) > 0).tolist() == [True, True, True, False]
    assert (warp(logits, SamplingParams(temperature=1.0, min_p=0.2)) > 0).tolist() == [True, True, True, False]
    probs = warp(logits, SamplingParams(temperature=1.0))
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.3, 0.15, 0.05]))
    colder = warp(logits, SamplingParams(temperature=0.5))
    assert colder[0] > probs[0]


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([2.0, -2.0, 2.0])
    apply_repetition_penalty(logits, [0, 1, 0], 2.0)
    assert logits.tolist() == [1.0, -4.0, 2.0]


def test_seeded_sampling_repeats_and_differs_by_seed():
    logits = torch.randn(1, 50)
    params = SamplingParams(temperature=1.0)
    draws = lambda seed: [pick_tokens(logits.clone(), [r], [])[0] for r in [row(params, seed=seed)] for _ in range(20)]  # noqa: E731
    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_sampling_params_are_checked():
    for bad in (dict(max_new_tokens=0), dict(top_p=0), dict(top_p=1.5), dict(min_p=1), dict(top_k=-1),
                dict(repetition_penalty=0), dict(stop=("",)), dict(temperature=float("inf")),
                dict(repetition_penalty=float("inf")), dict(temperature=float("nan"))):
        with pytest.raises(LocalaiError):
            SamplingParams(**bad).validate()


# --- sizing ---------------------------------------------------------------------------------

LLAMA_8B = ModelShape(layers=32, kv_heads=8, head_dim=128, hidden=4096, intermediate=14336, vocab=128256,
                      max_positions=8192, dtype_bytes=2)


def test_kv_bytes_per_token_is_two_layers_heads_dim_bytes():
    assert LLAMA_8B.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024


def test_batch_on_a_made_up_24_gib_card():
    # 16 GiB of weights loaded, 7 GiB left of 24
    plan = plan_memory(LLAMA_8B, device="cuda", available_bytes=7 * GIB, total_bytes=24 * GIB,
                       model_bytes=16 * GIB, wanted_ctx=4096, min_ctx=100, requests=100, batch_cap=64,
                       prefill_tokens=4096)
    margin = int(0.10 * 24 * GIB)
    workspace = 4096 * (6 * 4096 + 3 * 14336 + 4 * 8 * 128) * 2
    per_sequence = 4096 * 128 * 1024 + 12 * 128256
    assert plan.margin_bytes == margin and plan.workspace_bytes == workspace
    assert plan.batch == (7 * GIB - margin - workspace) // per_sequence == 8
    assert plan.reason == "memory" and plan.max_ctx == 4096
    assert plan.kv_cache_bytes == 8 * 4096 * 128 * 1024
    assert plan.predicted_peak_bytes == 16 * GIB + workspace + 8 * per_sequence
    text = "\n".join(plan.lines())
    assert "2 x layers x kv_heads x head_dim x dtype bytes = 131072" in text and "batch 8 (memory)" in text


def test_batch_is_capped_by_the_device_and_the_number_of_requests():
    big = dict(device="cuda", available_bytes=70 * GIB, total_bytes=80 * GIB, model_bytes=2 * GIB,
               wanted_ctx=1024, min_ctx=10, batch_cap=64, prefill_tokens=4096)
    assert plan_memory(LLAMA_8B, requests=1000, **big).batch == 64
    assert plan_memory(LLAMA_8B, requests=5, **big).reason == "number of requests"
    assert plan_memory(LLAMA_8B, requests=5, **big).batch == 5
    assert plan_memory(LLAMA_8B, requests=1000, requested_batch=3, **big).batch == 3
    assert plan_memory(LLAMA_8B, requests=1000, requested_batch=100, **big).reason == "asked for"  # beyond the cap


def test_an_asked_for_batch_is_capped_by_the_requests_and_the_memory():
    one_request = plan_memory(LLAMA_8B, device="cpu", available_bytes=64 * GIB, total_bytes=64 * GIB,
                              model_bytes=GIB, wanted_ctx=512, min_ctx=10, requests=1, batch_cap=8,
                              prefill_tokens=512, requested_batch=20000)
    assert one_request.batch == 1 and one_request.reason == "number of requests"
    # 7 GiB free on a 24 GiB card holds 8 sequences of 4096 tokens: asking for 32 gets 8
    squeezed = plan_memory(LLAMA_8B, device="cuda", available_bytes=7 * GIB, total_bytes=24 * GIB,
                           model_bytes=16 * GIB, wanted_ctx=4096, min_ctx=100, requests=100, batch_cap=64,
                           prefill_tokens=4096, requested_batch=32)
    assert squeezed.batch == 8 and squeezed.reason == "memory"
    # one asked-for sequence that does not fit gets a shorter context, as without asking
    tight = plan_memory(LLAMA_8B, device="cuda", available_bytes=3 * GIB, total_bytes=24 * GIB,
                        model_bytes=16 * GIB, wanted_ctx=8192, min_ctx=100, requests=1, batch_cap=64,
                        prefill_tokens=512, requested_batch=1)
    assert tight.batch == 1 and tight.reason == "memory (context shortened)" and 100 < tight.max_ctx < 8192


def test_a_context_too_short_for_the_prompt_is_refused():
    with pytest.raises(LocalaiError, match="a context of 5 tokens cannot hold a 17-token prompt"):
        plan_memory(LLAMA_8B, device="cpu", available_bytes=64 * GIB, total_bytes=64 * GIB, model_bytes=GIB,
                    wanted_ctx=5, min_ctx=18, requests=1, batch_cap=8, prefill_tokens=512)


def test_a_plain_string_is_one_stop_string():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b") and SamplingParams(stop=None).stop == ()


def test_context_shrinks_when_one_full_sequence_does_not_fit_and_fails_when_nothing_does():
    small = dict(device="cuda", total_bytes=8 * GIB, model_bytes=6 * GIB, wanted_ctx=8192, requests=4,
                 batch_cap=64, prefill_tokens=512)
    margin, workspace = int(0.8 * GIB), 512 * (6 * 4096 + 3 * 14336 + 4 * 8 * 128) * 2
    available = margin + workspace + 300 * MIB
    plan = plan_memory(LLAMA_8B, available_bytes=available, min_ctx=100, **small)
    assert plan.batch == 1 and plan.reason == "memory (context shortened)"
    assert plan.max_ctx == (300 * MIB - 12 * 128256) // (128 * 1024)
    with pytest.raises(LocalaiError, match="not enough memory"):
        plan_memory(LLAMA_8B, available_bytes=available, min_ctx=4000, **small)


def test_a_prompt_longer_than_the_model_context_is_refused():
    with pytest.raises(LocalaiError, match="context"):
        plan_memory(LLAMA_8B, device="cpu", available_bytes=64 * GIB, total_bytes=64 * GIB, model_bytes=GIB,
                    wanted_ctx=9000, min_ctx=9000, requests=1, batch_cap=8, prefill_tokens=512)


# --- streamed text --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def stream_all(tokenizer, text, stop=()):
    stream = TextStream(tokenizer, stop)
    pieces = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        pieces.append(stream.add(token))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    return pieces, stream


def test_streamed_pieces_add_up_to_the_decoded_text_even_for_multibyte_characters(tokenizer):
    text = "Hello world! Ünïcødé ✓ and emoji 🙂 done."
    pieces, _ = stream_all(tokenizer, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_string_across_tokens_is_held_back_then_cut(tokenizer):
    pieces, stream = stream_all(tokenizer, "The capital of France is Paris. The capital", stop=("Paris",))
    assert "".join(pieces) == "The capital of France is "
    assert stream.stopped
    assert not any("Par" in piece for piece in pieces)


# --- generate's input parsing ---------------------------------------------------------------


def test_plain_lines_are_one_prompt_each_and_blank_lines_are_skipped():
    specs = parse_lines(["first prompt\n", "\n", "second prompt\n"], "p.txt", SamplingParams())
    assert [s.prompt for s in specs] == ["first prompt", "second prompt"]


@pytest.mark.parametrize("source", ["prompts", "p.jsonl", "<stdin>"])
def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(source):
    jsonl = parse_lines(['\ufeff{"prompt": "a"}\n', '{"prompt": "b"}\n'], source, SamplingParams())
    assert [s.prompt for s in jsonl] == ["a", "b"]
    assert [s.prompt for s in parse_lines(["\ufeffplain\n"], "p.txt", SamplingParams())] == ["plain"]


def test_a_txt_file_is_plain_lines_and_a_jsonl_file_json_whatever_they_start_with():
    lines = ['{"a": 1} -- what does this JSON mean?\n', "plain\n"]
    assert [s.prompt for s in parse_lines(lines, "Q.TXT", SamplingParams())] == [line.strip() for line in lines]
    with pytest.raises(LocalaiError, match="^q.jsonl:1: not valid JSON"):
        parse_lines(["plain\n"], "q.jsonl", SamplingParams())
    with pytest.raises(LocalaiError, match="^q.prompts:1: not valid JSON"):
        parse_lines(lines, "q.prompts", SamplingParams())  # any other name: JSONL when it starts with {


def test_jsonl_lines_carry_prompt_messages_and_options():
    lines = ['{"prompt": "a", "max_new_tokens": 5, "temperature": 0.5, "stop": "x", "id": "one"}\n',
             '{"messages": [{"role": "user", "content": "b"}], "seed": 3, "system": "s"}\n']
    first, second = parse_lines(lines, "in.jsonl", SamplingParams(max_new_tokens=9))
    assert first.prompt == "a" and first.id == "one"
    assert (first.params.max_new_tokens, first.params.temperature, first.params.stop) == (5, 0.5, ("x",))
    assert second.messages[0]["content"] == "b" and second.params.seed == 3 and second.system == "s"
    assert second.params.max_new_tokens == 9


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"', "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"prompt": "a", "temprature": 1}', "unknown key 'temprature'"),
    ('{"prompt": "a", "messages": []}', "exactly one of prompt or messages"),
    ('{"prompt": 3}', "prompt must be a string"),
    ('{"prompt": "a", "max_new_tokens": "many"}', "max_new_tokens must be an integer"),
    ('{"prompt": "a", "top_p": 2}', "top_p must be in"),
    ('{"prompt": "a", "max_new_tokens": 1e400}', "max_new_tokens must be an integer, got inf"),
    ('{"prompt": "a", "max_new_tokens": NaN}', "max_new_tokens must be an integer, got nan"),
    ('{"prompt": "a", "temperature": Infinity}', "temperature must be a number, got inf"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "bad message"),
])
def test_a_malformed_jsonl_line_is_reported_with_its_number(line, message):
    lines = ['{"prompt": "fine"}\n', "\n", line + "\n"]
    with pytest.raises(LocalaiError) as error:
        parse_lines(lines, "batch.jsonl", SamplingParams())
    assert error.value.message.startswith("batch.jsonl:3: ") and message in error.value.message


def test_arguments_stdin_and_files_combine_in_order(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("from file\n")
    specs = read_prompts(["arg", "-"], str(prompts), io.StringIO("from stdin\n"), SamplingParams())
    assert [s.prompt for s in specs] == ["arg", "from stdin", "from file"]
    with pytest.raises(LocalaiError, match="no such file"):
        read_prompts([], str(tmp_path / "missing.txt"), io.StringIO(""), SamplingParams())


def test_text_that_is_not_utf8_is_refused_with_where_it_came_from():
    undecodable = b"caf\xe9\n".decode("utf-8", "surrogateescape")  # how Python keeps bytes it cannot decode
    with pytest.raises(LocalaiError, match="^<stdin>:2 is not UTF-8 text"):
        read_prompts(["-"], None, io.StringIO("fine\n" + undecodable), SamplingParams())
    with pytest.raises(LocalaiError, match="^x.jsonl:1 is not UTF-8 text"):
        parse_lines(['{"prompt": "\\ud800"}'], "x.jsonl", SamplingParams())
    with pytest.raises(LocalaiError, match="^a prompt argument is not UTF-8 text"):
        read_prompts([undecodable], None, io.StringIO(""), SamplingParams())
    strict = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8")
    with pytest.raises(LocalaiError, match="^<stdin> is not UTF-8 text"):
        read_prompts(["-"], None, strict, SamplingParams())


def test_a_global_seed_gives_each_request_its_own_seed():
    specs = parse_lines(['{"prompt": "a"}', '{"prompt": "b", "seed": 100}', '{"prompt": "c"}'], "x.jsonl",
                        SamplingParams())
    assert [s.params.seed for s in seeded(specs, 7)] == [7, 100, 9]
    assert [s.params.seed for s in seeded(specs, None)] == [None, 100, None]


def _turbo(out_features: int, seed: int, bias: bool = False):
    from localai.quant.linear import TurboLinear
    from localai.quant.turboquant import quantize_weight

    packed = quantize_weight(torch.randn(out_features, 96), 32, seed=seed)
    return TurboLinear.from_packed(packed.codes, packed.gains, 96, 32, seed,
                                   bias=torch.randn(out_features) if bias else None)


@pytest.mark.parametrize("biases", [(False, False, False), (True, False, True)])
def test_turbolinears_with_one_rotation_stack_into_one_call(biases):
    """q/k/v as TurboLinear with one seed: one rotation and one kernel call, the same outputs as
    calling each layer, and the layers keep working on views of the stacked codes (no copy)."""
    from localai.engine.model import Projection

    torch.manual_seed(0)
    layers = [_turbo(n, seed=5, bias=b) for n, b in zip((64, 32, 32), biases)]
    x = torch.randn(3, 96)
    expected = [layer(x) for layer in layers]
    projection = Projection(layers)
    assert projection.turbo and projection.fused
    for got, want in zip(projection(x), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert layers[1].codes.data_ptr() == projection.codes[64:].data_ptr()
    torch.testing.assert_close(layers[2](x), expected[2], rtol=0, atol=1e-5)  # a module still runs alone


def test_turbolinears_with_different_rotations_run_one_by_one():
    from localai.engine.model import Projection

    layers = [_turbo(64, seed=1), _turbo(32, seed=2)]
    x = torch.randn(2, 96)
    projection = Projection(layers)
    assert not projection.fused and not projection.turbo
    for got, layer in zip(projection(x), layers):
        assert torch.equal(got, layer(x))
