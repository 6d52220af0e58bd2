"""The engine on the real SmolLM2-135M-Instruct, fp32 and TurboQuant: greedy equality with transformers.

Select with `-m realmodel`; the model comes from the `smollm2` fixture (tests/conftest.py).
"""

from __future__ import annotations

import pytest

from greedy_reference import transformers_greedy
from localai.engine.api import Engine, generate_batch
from localai.engine.request import SamplingParams

pytestmark = pytest.mark.realmodel

PROMPTS = ["The capital of France is", "Write a short poem about the sea.", "Why is the sky blue?",
           "List three uses of a paperclip."]
NEW_TOKENS = 24


def engine_greedy(engine, prompts, batch, new_tokens=NEW_TOKENS):
    params = SamplingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    requests = [engine.request(p, chat=False, params=params) for p in prompts]
    return [r.token_ids for r in generate_batch(engine, requests, batch_size=batch)]


def check_same_as_transformers(folder, prompts, batches, new_tokens=NEW_TOKENS):
    from localai.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(folder)
    reference = transformers_greedy(load_model(folder, device="cpu"), tokenizer, prompts, new_tokens)
    engine = Engine(load_model(folder, device="cpu"), tokenizer)
    assert engine.runner.kind == "lean"
    for batch in batches:
        assert engine_greedy(engine, prompts, batch, new_tokens) == reference
    return engine


def test_smollm2_greedy_matches_transformers_token_for_token(smollm2):
    engine = check_same_as_transformers(smollm2, PROMPTS, batches=(len(PROMPTS), 1))
    answer = generate_batch(engine, [engine.request("What is the capital of France?",
                                                    params=SamplingParams(max_new_tokens=24))])[0]
    assert "Paris" in answer.text and answer.finish_reason in ("stop", "length")


def test_turboquant_smollm2_runs_through_the_same_engine(smollm2, tmp_path_factory):
    from localai.quant.pipeline import QuantizeOptions, quantize

    out = tmp_path_factory.mktemp("tq") / "smollm2-tq4"
    quantize(smollm2, out, QuantizeOptions(use_calib=False))
    # the CPU TurboQuant kernel is slow on this model: a short check
    engine = check_same_as_transformers(out, PROMPTS[:2], batches=(2,), new_tokens=8)
    layer = engine.runner.model.layers[0]
    assert layer.qkv.turbo and layer.gate_up.turbo and type(layer.qkv.parts[0]).__name__ == "TurboLinear"
