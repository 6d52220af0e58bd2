"""Generate answers to prompts, batched to fit the device; stream text or write JSONL."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer


def main(
    model: str = typer.Argument(..., help="Alias, hub repo id, model folder or .gguf file."),
    prompts: Optional[List[str]] = typer.Argument(None, metavar="[PROMPT]...",
                                                  help="Prompts, one per argument; - reads them from stdin."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="Prompts file: one per line, or JSONL "
                                       "with prompt/messages and per-request options (a .txt file is always "
                                       "plain lines); - = stdin."),
    jsonl: bool = typer.Option(False, "--jsonl", help="One JSON object per request, in input order."),
    json_output: bool = typer.Option(False, "--json", help="One JSON document with every result and the stats."),
    batch_size: str = typer.Option("auto", "--batch-size", metavar="auto|N", help="Sequences decoded together: auto or N."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Stop after this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; higher = more random."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample from the smallest set with this much probability."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the K most likely tokens (0 = all)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below this fraction of the top probability."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Above 1 discourages repeats."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop when this text appears (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed; request i uses seed + i."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for the chat template."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template to plain prompts."),
    stats: bool = typer.Option(False, "--stats", help="Print throughput and memory to stderr."),
    compile: bool = typer.Option(False, "--compile", help="CUDA: compile the decode step with torch.compile "
                                 "(fused kernels in CUDA graphs); the default replays the plain step as CUDA graphs."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
) -> None:
    """Generate answers to prompts, batched to fit the device; stream text or write JSONL."""
    from localai.engine.inputs import read_prompts, seeded
    from localai.engine.request import SamplingParams
    from localai.errors import UsageError

    if jsonl and json_output:
        raise UsageError("--json and --jsonl exclude each other", "pass one of them")
    from localai.loading import check_dtype_name

    check_dtype_name(dtype, UsageError)
    batch = parse_batch_size(batch_size, UsageError)
    defaults = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              min_p=min_p, repetition_penalty=repetition_penalty, stop=tuple(stop or ())).validate(UsageError)
    arguments = list(prompts or [])
    if not arguments and file is None and not sys.stdin.isatty():
        arguments = ["-"]
    specs = seeded(read_prompts(arguments, file, sys.stdin, defaults), seed)
    for spec in specs:  # the seeds that --seed gave (a file's own options were checked as it was read)
        spec.params.validate(UsageError)
    if not specs:
        raise UsageError("no prompts given", "pass prompts as arguments, with -f FILE, or on stdin")
    if raw:  # without a chat template an empty prompt has no tokens at all
        empty = next((i for i, spec in enumerate(specs) if spec.messages is None and not spec.prompt), None)
        if empty is not None:
            raise UsageError(f"prompt {empty + 1} is empty", "give every prompt some text")

    from localai.console import info, out, out_json, verbose
    from localai.engine.api import Engine
    from localai.engine.events import RequestResult
    from localai.engine.ordered import in_order

    if compile:
        from localai.device import resolve_device

        if resolve_device() != "cuda":
            raise UsageError("--compile needs a CUDA GPU", "drop --compile on the CPU")
    info(f"loading {model}...")
    engine = Engine.load(model, dtype=dtype, decode_mode="compile" if compile else None, notice=info)
    if engine.fallback_reason:
        verbose(f"engine: transformers forward ({engine.fallback_reason})")
    requests = [engine.request(s.prompt, messages=s.messages, system=s.system or system, params=s.params,
                               id=s.id if s.id is not None else i, chat=False if raw else None)
                for i, s in enumerate(specs)]
    plan = engine.plan_for(requests, batch)
    for line in plan.lines():
        verbose(line)
    results = [RequestResult(request_id=r.id, index=i, prompt=r.prompt) for i, r in enumerate(requests)]
    written: set[int] = set()  # --jsonl rows on stdout
    try:
        for index, text, done in in_order(engine.stream(requests, plan=plan), results):
            if jsonl and done:
                out(json_line(results[index]))
                written.add(index)
            elif not (jsonl or json_output):
                out(text + ("\n" if done else ""), end="")
                if done and index + 1 < len(results):
                    out()
    except KeyboardInterrupt:  # keep what was finished, even where input order held it back
        finished = [r for r in results if r.finish_reason is not None]
        if jsonl:
            for result in finished:
                if result.index not in written:
                    out(json_line(result))
        if json_output:
            out_json({**json_document(model, finished, engine), "interrupted": True})
        raise
    if json_output:
        out_json(json_document(model, results, engine))
    if stats:
        info(stats_line(summarize(results, engine)))


def parse_batch_size(value: str, error) -> Optional[int]:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise error(f"--batch-size must be auto or a positive number, got {value!r}", "e.g. --batch-size 8")
    return int(value)


def json_line(result) -> str:
    import json

    return json.dumps(result.to_json())  # ASCII, as --json: valid in any stdout encoding


def json_document(model: str, results, engine) -> dict:
    return {"model": model, "results": [r.to_json() for r in results], "stats": summarize(results, engine)}


def summarize(results, engine) -> dict:
    from localai.engine.sizing import peak_memory

    seconds = max((r.elapsed for r in results), default=0.0)
    generated = sum(len(r.token_ids) for r in results)
    return {"requests": len(results), "prompt_tokens": sum(r.prompt_tokens for r in results),
            "generated_tokens": generated, "seconds": round(seconds, 3),
            "tokens_per_second": round(generated / seconds, 2) if seconds else 0.0,
            "batch_size": engine.plan.batch, "context": engine.plan.max_ctx, "engine": engine.runner.kind,
            "peak_memory_bytes": peak_memory(engine.device)}


def stats_line(summary: dict) -> str:
    return (f"{summary['requests']} requests: {summary['prompt_tokens']} prompt + {summary['generated_tokens']} "
            f"generated tokens in {summary['seconds']:.2f} s = {summary['tokens_per_second']:.1f} tokens/s "
            f"(batch {summary['batch_size']}, context {summary['context']}, {summary['engine']} engine), "
            f"peak memory {summary['peak_memory_bytes'] / 2**20:,.0f} MiB")
