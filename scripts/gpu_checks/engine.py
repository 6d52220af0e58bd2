"""GPU checks for the generation engine, as one section of scripts/device_check.py.

run() -> dict. A ~1.1B-parameter Llama-shaped model (TinyLlama-1.1B shape) with random
weights, in bf16 and then TurboQuant 4-bit (data-free, on the GPU; lm_head and embeddings
stay bf16). Greedy, 32-token prompts, 32 new tokens (EOS never ends a request early):
- tokens/s at batch 1, 8, 32, 64 for transformers `generate` and for the engine with the
  eager step, the step replayed as CUDA graphs, and torch.compile (reduce-overhead; batch 1
  and 64 only, compile time reported apart), each in the same run;
- greedy tokens of the engine against transformers at batch 1 (bf16, so "same" is informative);
- sizing: the plan for a made-up 8 GiB card (batch from memory, 4096-token context) run for
  real: predicted vs measured peak memory, planned vs allocated KV cache.
Each measurement has its own try/except; parts that would not fit the time budget are skipped.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import import_localai  # noqa: E402
from target import (DEVICE, REHEARSAL, allocated_bytes, empty_cache, missing_device, peak_memory_bytes,  # noqa: E402
                    reset_peak_memory, sized, synchronize)

BUDGET_S = 85.0
SHAPE = sized(dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                   intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096),
              dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, vocab_size=512, max_position_embeddings=4096))
BATCHES = (1, 8, 32, 64)
PROMPT_TOKENS, NEW_TOKENS, CONTEXT = 32, 32, 128
COMPILE_NEED_S = 30.0  # torch.compile of one decode shape, warm-up included
_deadline = float("inf")


def _time_left() -> float:
    return _deadline - time.perf_counter()


class IdTokenizer:
    """Random weights need no vocabulary: token ids print as numbers."""

    eos_token_id = None

    def decode(self, ids, **kwargs) -> str:
        return "".join(f" {i}" for i in ids)


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPE, tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    return model


def prompts(batch: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, SHAPE["vocab_size"], (batch, PROMPT_TOKENS), generator=generator)


def hf_generate(model, batch: int) -> tuple[float, list[list[int]]]:
    import torch

    ids = prompts(batch).to(DEVICE)
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)  # warm-up
        synchronize()
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False)
        synchronize()
    return batch * NEW_TOKENS / (time.perf_counter() - start), out[:, PROMPT_TOKENS:].tolist()


def engine_generate(engine, batch: int, new_tokens: int = NEW_TOKENS) -> tuple[float, list[list[int]], float]:
    """(tokens/s, token ids, seconds of the untimed warm-up run that captures/compiles)."""
    from localai.engine.api import generate_batch
    from localai.engine.request import Request, SamplingParams

    def requests(count):
        params = SamplingParams(max_new_tokens=count, min_new_tokens=count)
        return [Request(prompt_ids=row, params=params) for row in prompts(batch).tolist()]

    start = time.perf_counter()
    generate_batch(engine, requests(4), batch_size=batch, max_ctx=CONTEXT)  # warm-up: graphs, compile
    warm = time.perf_counter() - start
    synchronize()
    start = time.perf_counter()
    results = generate_batch(engine, requests(new_tokens), batch_size=batch, max_ctx=CONTEXT)
    synchronize()
    return batch * new_tokens / (time.perf_counter() - start), [r.token_ids for r in results], warm


def attempt(report: dict, key: str, need_s: float, fn) -> None:
    """report[key] = fn(), or the error, or 'skipped' when less than need_s seconds are left."""
    if _time_left() < need_s:
        report[key] = {"skipped": f"{_time_left():.0f} s left, needs ~{need_s:.0f} s"}
        return
    try:
        report[key] = fn()
    except Exception as exc:  # keep measuring the rest
        report[key] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                       "traceback": traceback.format_exc()[-1500:]}
    print(f"{key}: {str(report[key])[:400]} ({_time_left():.0f} s left)", file=sys.stderr, flush=True)


def restore_layout(model) -> None:
    """Give every nn.Linear a contiguous weight again (an engine re-points them at fused, transposed storage)."""
    import torch

    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.is_contiguous():
            module.weight = torch.nn.Parameter(module.weight.detach().contiguous(), requires_grad=False)


def transformers_table(report: dict, label: str, model) -> None:
    restore_layout(model)
    for batch in BATCHES:
        attempt(report, f"{label}/transformers/b{batch}", 4, lambda: round(hf_generate(model, batch)[0], 1))


def engine_table(report: dict, label: str, model, modes: dict) -> None:
    """tokens/s of the engine in each decode mode at the given batches."""
    from localai.engine.api import Engine

    for mode, batches in modes.items():
        if REHEARSAL and mode != "eager":
            report[f"{label}/{mode}"] = {"skipped": "needs a CUDA GPU"}
            continue
        try:
            engine = Engine(model, IdTokenizer(), decode_mode=mode)
        except Exception as exc:
            report[f"{label}/{mode}"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue
        for batch in batches:
            def measure(engine=engine, batch=batch):
                tps, _, warm = engine_generate(engine, batch)
                return {"tokens_per_s": round(tps, 1), "warmup_s": round(warm, 2)}

            attempt(report, f"{label}/{mode}/b{batch}", COMPILE_NEED_S if mode == "compile" else 4, measure)
        engine = None  # free its fused weights and cache before the next mode
        empty_cache()


def greedy_agreement(model) -> dict:
    from localai.engine.api import Engine

    restore_layout(model)
    _, reference = hf_generate(model, 1)
    engine = Engine(model, IdTokenizer())  # the device's default: CUDA graphs, eager in a rehearsal
    _, ours, _ = engine_generate(engine, 1)
    same = sum(a == b for a, b in zip(reference[0], ours[0]))
    return {"same_tokens": same, "of": len(reference[0]), "first_difference": next(
        (i for i, (a, b) in enumerate(zip(reference[0], ours[0])) if a != b), None)}


def to_turboquant(model) -> int:
    """Replace every linear inside the decoder layers by a TurboLinear (data-free, group 64); returns the count."""
    from localai.quant.calibrate import target_linears
    from localai.quant.linear import TurboLinear
    from localai.quant.turboquant import quantize_weight

    modules = dict(model.named_modules())
    targets = target_linears(model, quantize_head=False)
    for name, linear in targets.items():
        packed = quantize_weight(linear.weight.detach().float().contiguous(), 64, seed=0)
        layer = TurboLinear.from_packed(packed.codes, packed.gains, linear.in_features, 64, 0,
                                        bias=linear.bias.detach() if linear.bias is not None else None,
                                        block=packed.layout.block)
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, layer)
    empty_cache()
    return len(targets)


def sizing(model) -> dict:
    """Plan for a made-up 8 GiB card (512 MiB in a rehearsal), then run that plan: predicted vs
    measured peak memory."""
    from localai.engine.api import Engine, generate_batch
    from localai.engine.request import Request, SamplingParams
    from localai.engine.sizing import GIB, plan_memory

    engine = Engine(model, IdTokenizer(), decode_mode="eager")
    total = sized(8 * GIB, GIB // 2)
    plan = plan_memory(engine.shape, device=DEVICE, available_bytes=total - engine.model_bytes, total_bytes=total,
                       model_bytes=engine.model_bytes, wanted_ctx=4096, min_ctx=PROMPT_TOKENS + 1, requests=10_000,
                       batch_cap=10_000, prefill_tokens=engine.prefill_tokens)
    empty_cache()
    baseline = allocated_bytes()
    reset_peak_memory()
    engine.prepare(plan)
    requests = [Request(prompt_ids=row, params=SamplingParams(max_new_tokens=8, min_new_tokens=8))
                for row in prompts(plan.batch).tolist()]
    generate_batch(engine, requests, plan=plan)
    measured = peak_memory_bytes()
    other = baseline - engine.model_bytes  # allocations that are not the model (should be ~0)
    measured -= other
    return {"plan": plan.to_json(), "lines": plan.lines(), "chosen_batch": plan.batch,
            "kv_cache_planned_bytes": plan.kv_cache_bytes, "kv_cache_allocated_bytes": engine.runner.cache_bytes(),
            "predicted_peak_bytes": plan.predicted_peak_bytes, "measured_peak_bytes": measured,
            "other_allocations_bytes": other, "peak_ratio": round(measured / plan.predicted_peak_bytes, 3)}


def run() -> dict:
    global _deadline
    _deadline = time.perf_counter() + float(os.environ.get("ENGINE_CHECK_BUDGET_S", BUDGET_S))
    report: dict = {"shape": SHAPE, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS}
    if why := missing_device():
        return {**report, "error": why}
    try:
        import_localai()
        model = build_model()
        report["parameters"] = sum(p.numel() for p in model.parameters())
    except Exception as exc:
        report["error"] = f"setup: {type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()[-2000:]
        return report
    transformers_table(report, "bf16", model)
    attempt(report, "bf16/greedy_vs_transformers", 6, lambda: greedy_agreement(model))
    engine_table(report, "bf16", model, {"eager": BATCHES, "graphs": BATCHES})
    attempt(report, "sizing", 8, lambda: sizing(model))
    if _time_left() > COMPILE_NEED_S + 40:  # leave room for the TurboQuant tables
        engine_table(report, "bf16", model, {"compile": (1,)})
    attempt(report, "turboquant/layers", 15, lambda: to_turboquant(model))
    if isinstance(report["turboquant/layers"], int):
        transformers_table(report, "turboquant", model)
        engine_table(report, "turboquant", model, {"eager": BATCHES, "graphs": BATCHES, "compile": (1, 64)})
    report["seconds_left"] = round(_time_left(), 1)
    return report


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
