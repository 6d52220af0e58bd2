"""Prompts and loaders shared by the engine tests."""

from __future__ import annotations

import torch

from greedy_reference import transformers_greedy
from localai.engine.request import SamplingParams

PROMPTS = ["The capital of France", "Hello world! How are", "0123", "Local models run on one consumer GPU with four-bit",
           "abc", "The capital of Italy is Rome. The capital of France is"]


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def reference_ids(folder, prompts, new_tokens):
    return transformers_greedy(*load(folder), prompts, new_tokens)


def fixed_length(engine, prompts, new_tokens, **params):
    return [engine.request(p, chat=False, params=SamplingParams(max_new_tokens=new_tokens,
                                                                 min_new_tokens=new_tokens, **params))
            for p in prompts]
