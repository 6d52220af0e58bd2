"""Perplexity with the project's protocol: the first 400,000 characters of the text,
the first `windows` non-overlapping windows of `ctx` tokens, exp(mean next-token NLL).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from localai.errors import LocalaiError
from localai.infile import read_text_file

EVAL_CHARS = 400_000
# the standard corpus, looked up beside the project: <root>/../shared/data/wikitext-2-raw/wiki.test.raw
WIKITEXT_PARTS = ("shared", "data", "wikitext-2-raw", "wiki.test.raw")


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    windows: int
    ctx: int
    tokens_scored: int
    seconds: float


def default_text_path() -> Path | None:
    """wiki.test.raw when it sits beside the project checkout, else None."""
    project_root = Path(__file__).resolve().parent.parent
    path = project_root.parent.joinpath(*WIKITEXT_PARTS)
    return path if path.is_file() else None


def read_text(path: Path | None) -> str:
    """The evaluation text from `path` (or the default corpus), read byte for byte."""
    path = path or default_text_path()
    if path is None:
        raise LocalaiError("no evaluation text: the default wiki.test.raw was not found beside the project",
                           "pass one with --text FILE (WikiText-2's wiki.test.raw is the usual choice)")
    return read_text_file(path, "--text")  # CRLF kept as stored: tokenization depends on it


def check_windows(windows: int, ctx: int, error=LocalaiError) -> None:
    """At least one window of at least two tokens (`error`: the class to raise)."""
    if windows < 1 or ctx < 2:
        raise error(f"need at least 1 window of at least 2 tokens, got {windows} x {ctx}",
                    "use --windows 1 or more and --ctx 2 or more")


def eval_windows(tokenizer, text: str, windows: int, ctx: int):
    """Token windows for the protocol: LongTensor [W, ctx] from the first EVAL_CHARS characters."""
    check_windows(windows, ctx)
    ids = tokenizer(text[:EVAL_CHARS], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    available = ids.numel() // ctx
    if available < windows:
        raise LocalaiError(f"the text gives only {available} windows of {ctx} tokens, {windows} asked for",
                           "pass a longer --text or fewer --windows")
    return ids[: windows * ctx].reshape(windows, ctx)


def check_context(folder: Path, ctx: int) -> None:
    """A window longer than the model's context (max_position_embeddings) scores positions it was never
    trained on: refuse it."""
    from localai.loading import read_auto_config

    config = read_auto_config(folder, "check that this is a transformers text-generation model").get_text_config()
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and ctx > context:
        raise LocalaiError(f"--ctx {ctx} is longer than the context of {folder} ({context} tokens)",
                           f"use --ctx {context} or less")


def perplexity(model, tokens, batch_size: int = 4, on_window=None) -> PerplexityResult:
    """exp(mean next-token NLL) over token windows [W, ctx]; `on_window(done, total)` reports progress."""
    import torch
    import torch.nn.functional as F

    windows, ctx = tokens.shape
    device = next(model.parameters()).device
    total_nll, scored = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, windows, batch_size):
            batch = tokens[first: first + batch_size].to(device)  # [B, ctx]
            logits = model(input_ids=batch, use_cache=False).logits  # [B, ctx, V]
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                  batch[:, 1:].reshape(-1), reduction="sum")
            total_nll += nll.item()
            scored += batch[:, 1:].numel()
            if on_window:
                on_window(min(first + batch_size, windows), windows)
    mean_nll = total_nll / scored
    return PerplexityResult(math.exp(mean_nll), mean_nll, windows, ctx, scored, time.perf_counter() - start)


SPEED_PROMPT = "The history of the printing press"


@dataclass
class DecodeSpeed:
    tokens: int  # new tokens decoded after the first
    seconds: float
    tokens_per_second: float


def decode_speed(model, tokenizer, new_tokens: int = 64) -> DecodeSpeed:
    """Greedy decoding speed at batch 1 through the engine: new tokens after the first, per second.

    EOS is ignored so every run decodes exactly `new_tokens`; one short run first warms the
    kernels. Both runs share one memory plan: a new plan allocates a new cache, and on a GPU
    the decode step is then captured again, inside the timed run. The engine takes the
    model's weights over, so score perplexity before this.
    """
    from localai.engine.api import Engine, generate_batch
    from localai.engine.request import SamplingParams

    if new_tokens < 2:
        raise LocalaiError(f"speed needs at least 2 new tokens, got {new_tokens}", "use --speed-tokens 2 or more")
    engine = Engine(model, tokenizer)

    def request(count: int):
        params = SamplingParams(max_new_tokens=count, min_new_tokens=count)
        return engine.request(SPEED_PROMPT, chat=False, params=params)

    plan = engine.plan_for([request(new_tokens)], batch_size=1)

    def run(count: int):
        return generate_batch(engine, [request(count)], plan=plan)[0]

    run(min(8, new_tokens))
    result = run(new_tokens)
    decoded = len(result.token_ids) - 1
    seconds = result.elapsed - result.time_to_first_token
    return DecodeSpeed(decoded, seconds, decoded / seconds)


def weight_bytes(folder: Path) -> int:
    """Bytes of a model folder's weight files (safetensors), the tokenizer and configs left out."""
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))
