"""Generation throughput: the localai engine against transformers `generate`, side by side.

1. Same prompts, greedy, N new tokens (EOS masked so every answer has N tokens), at batch
   1 and 16: tokens/s of each (median of --repeats alternating runs) and whether the texts
   are identical.
2. 32 requests of mixed lengths (8..256 new tokens): continuous batching against static
   batches of the same size, in the engine (a static batch is admitted whole and keeps its
   finished rows until its longest request ends, as transformers generate does).

A table goes to stderr, JSON to stdout. Default model: SmolLM2-135M (fp32) from the store.

    python scripts/bench_generate.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

PROMPTS = [
    "The capital of France is", "Write a short poem about the sea.", "Explain photosynthesis in simple words.",
    "What is the best way to learn a new language?", "List three uses of a paperclip.",
    "Once upon a time, in a small village,", "How does a computer store numbers?", "Describe a sunset over the mountains.",
    "Why is the sky blue?", "Give me a recipe for pancakes.", "What are the planets of the solar system?",
    "Tell me a joke about programmers.", "Summarize the plot of Romeo and Juliet.", "How do airplanes fly?",
    "What is machine learning?", "Write a haiku about autumn leaves.",
]


def load(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    from localai.loading import load_tokenizer

    def model():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    return model(), model(), load_tokenizer(path)


def run_transformers(model, tokenizer, prompts: list[str], new_tokens: int) -> tuple[float, list[list[int]]]:
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    return seconds, out[:, batch["input_ids"].shape[1]:].tolist()


def engine_requests(engine, prompts: list[str], lengths: list[int]):
    from localai.engine.request import SamplingParams

    return [engine.request(p, chat=False, params=SamplingParams(max_new_tokens=n, min_new_tokens=n))
            for p, n in zip(prompts, lengths)]


def run_engine(engine, prompts: list[str], lengths: list[int], batch: int, max_ctx: int,
               continuous: bool = True) -> tuple[float, list[list[int]]]:
    from localai.engine.api import generate_batch

    requests = engine_requests(engine, prompts, lengths)
    started = time.perf_counter()
    results = generate_batch(engine, requests, batch_size=batch, max_ctx=max_ctx, continuous=continuous)
    return time.perf_counter() - started, [r.token_ids for r in results]


def compare(hf_model, engine, tokenizer, batch: int, new_tokens: int, repeats: int) -> dict:
    prompts = (PROMPTS * 4)[:batch]
    hf_times, lean_times = [], []
    run_transformers(hf_model, tokenizer, prompts, 4)  # warm-up
    max_ctx = 64 + new_tokens  # one context for every run, so the cache is allocated once
    run_engine(engine, prompts, [4] * batch, batch, max_ctx)
    for _ in range(repeats):
        seconds, hf_ids = run_transformers(hf_model, tokenizer, prompts, new_tokens)
        hf_times.append(seconds)
        seconds, lean_ids = run_engine(engine, prompts, [new_tokens] * batch, batch, max_ctx)
        lean_times.append(seconds)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    identical = [decode(a) == decode(b) for a, b in zip(hf_ids, lean_ids)]
    tokens = batch * new_tokens
    hf_tps = tokens / statistics.median(hf_times)
    lean_tps = tokens / statistics.median(lean_times)
    return {"batch": batch, "new_tokens": new_tokens, "transformers_tokens_per_s": round(hf_tps, 2),
            "localai_tokens_per_s": round(lean_tps, 2), "speedup": round(lean_tps / hf_tps, 3),
            "identical_text": all(identical), "identical_count": sum(identical),
            "transformers_runs_s": [round(t, 3) for t in hf_times], "localai_runs_s": [round(t, 3) for t in lean_times]}


def mixed(engine, batch: int, requests: int, repeats: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    lengths = [rng.randint(8, 256) for _ in range(requests)]
    prompts = (PROMPTS * 4)[:requests]
    times = {"continuous": [], "static": []}
    outputs = {}
    for _ in range(repeats):
        for mode in ("continuous", "static"):
            seconds, outputs[mode] = run_engine(engine, prompts, lengths, batch, 64 + 256,
                                                  continuous=mode == "continuous")
            times[mode].append(seconds)
    continuous, static = (statistics.median(times[m]) for m in ("continuous", "static"))
    return {"requests": requests, "batch": batch, "new_tokens_total": sum(lengths),
            "continuous_s": round(continuous, 3), "static_s": round(static, 3),
            "speedup": round(static / continuous, 3), "same_tokens": outputs["continuous"] == outputs["static"],
            "continuous_runs_s": [round(t, 3) for t in times["continuous"]],
            "static_runs_s": [round(t, 3) for t in times["static"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias or folder (default: smollm2-135m)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--mixed-requests", type=int, default=32)
    parser.add_argument("--mixed-batch", type=int, default=16)
    parser.add_argument("--mixed-repeats", type=int, default=1)
    parser.add_argument("--skip-mixed", action="store_true")
    args = parser.parse_args()

    import torch

    from localai.engine.api import Engine
    from localai.store import resolve_model

    torch.set_num_threads(args.threads)
    path = str(resolve_model(args.model))
    hf_model, engine_model, tokenizer = load(path)
    engine = Engine(engine_model, tokenizer)
    report = {"model": path, "threads": args.threads, "torch": torch.__version__, "runner": engine.runner.kind,
              "compare": [], "mixed": None}
    for batch in (int(b) for b in args.batches.split(",") if b):
        row = compare(hf_model, engine, tokenizer, batch, args.new_tokens, args.repeats)
        report["compare"].append(row)
        print(f"batch {batch:>3}: transformers {row['transformers_tokens_per_s']:8.1f} tok/s | localai "
              f"{row['localai_tokens_per_s']:8.1f} tok/s | x{row['speedup']:.2f} | identical text: "
              f"{row['identical_text']} ({row['identical_count']}/{batch})", file=sys.stderr)
    if not args.skip_mixed:
        row = mixed(engine, args.mixed_batch, args.mixed_requests, args.mixed_repeats)
        report["mixed"] = row
        print(f"mixed {row['requests']} requests at batch {row['batch']} ({row['new_tokens_total']} tokens): "
              f"continuous {row['continuous_s']:.1f} s | static {row['static_s']:.1f} s | x{row['speedup']:.2f} | "
              f"same tokens: {row['same_tokens']}", file=sys.stderr)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
