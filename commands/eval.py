"""Perplexity (and decoding speed) of models (fp, TurboQuant, int4 or bitsandbytes), side by side."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import List, Optional

import typer


def main(
    models: List[str] = typer.Argument(..., help="Model folders, aliases or hub repo ids; several make a table."),
    text: Optional[Path] = typer.Option(
        None, "--text", help="UTF-8 text to score, e.g. WikiText-2's wiki.test.raw (default: "
                             "../shared/data/wikitext-2-raw/wiki.test.raw beside a checkout, when present)."),
    windows: int = typer.Option(40, "--windows", help="Non-overlapping windows to score."),
    ctx: int = typer.Option(512, "--ctx", help="Tokens per window."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
    speed: bool = typer.Option(False, "--speed", help="Also time greedy decoding at batch 1 (tokens/s)."),
    speed_tokens: int = typer.Option(64, "--speed-tokens", help="New tokens per speed run."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout: an object, or a list for several models."),
) -> None:
    """Perplexity of one or more models on WikiText-2 or a text file, optionally with decoding speed.

    One model prints its perplexity alone; several (or --speed) print a table, every row
    measured the same way in this one process.
    """
    from localai.console import info, out, out_json
    from localai.errors import UsageError
    from localai.evaluate import check_windows, read_text
    from localai.store import resolve_model

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}", "use --batch-size 1 or more")
    check_windows(windows, ctx, UsageError)
    if speed and speed_tokens < 2:
        raise UsageError(f"--speed-tokens must be at least 2, got {speed_tokens}", "use --speed-tokens 2 or more")
    corpus = read_text(text)
    # every model is found and checked, and its tokenizer cuts the windows, before the first one is scored
    sources = [(name, resolve_model(name)) for name in models]
    checked = [(name, source, *_prepare(source, corpus, windows, ctx)) for name, source in sources]
    rows = []
    for index, (name, source, qc, tokenizer, tokens) in enumerate(checked, 1):
        if len(checked) > 1:
            info(f"[{index}/{len(checked)}] {name}")
        rows.append(_evaluate(source, qc, tokenizer, tokens, batch_size, speed_tokens if speed else 0))
        gc.collect()

    if as_json:
        out_json(rows[0] if len(rows) == 1 else rows)
    elif len(rows) == 1 and not speed:
        info(f"perplexity {rows[0]['perplexity']:.3f} over {rows[0]['tokens_scored']:,} tokens "
             f"in {rows[0]['seconds']:.1f} s")
        out(f"{rows[0]['perplexity']:.3f}")
    else:
        out(_table([name for name, *_ in checked], rows, speed))


def _prepare(source: Path, corpus: str, windows: int, ctx: int):
    """(quantization_config, tokenizer, token windows [W, ctx]) of one model, or its one-line error."""
    from localai.evaluate import check_context, eval_windows
    from localai.loading import load_tokenizer
    from localai.quant.checkpoint import validate

    qc = validate(source)
    check_context(source, ctx)
    tokenizer = load_tokenizer(source)
    return qc, tokenizer, eval_windows(tokenizer, corpus, windows, ctx)


def _evaluate(source: Path, qc: dict | None, tokenizer, tokens, batch_size: int, speed_tokens: int) -> dict:
    """One model's row: perplexity, then (speed_tokens > 0) greedy decoding speed."""
    from localai.console import info, status_line
    from localai.evaluate import decode_speed, perplexity, weight_bytes
    from localai.loading import load_model

    windows, ctx = tokens.shape
    lm = load_model(source)
    method = (qc or {}).get("quant_method", "none")
    info(f"quantization: {method}; scoring {windows} window{'s' if windows != 1 else ''} of {ctx} tokens")
    with status_line("scoring...") as show:
        result = perplexity(lm, tokens, batch_size,
                            on_window=lambda done, total: show(f"scored {done}/{total} windows"))
    row = {"model": str(source), "quantization": method, "weight_bytes": weight_bytes(source),
           "perplexity": result.perplexity, "mean_nll": result.mean_nll, "windows": result.windows,
           "ctx": result.ctx, "tokens_scored": result.tokens_scored, "seconds": result.seconds}
    if speed_tokens:
        with status_line(f"timing greedy decoding of {speed_tokens} tokens at batch 1"):
            timed = decode_speed(lm, tokenizer, speed_tokens)
        row["decode_tokens_per_s"] = timed.tokens_per_second
        row["decode_tokens"] = timed.tokens
    return row


def _table(names: list[str], rows: list[dict], speed: bool) -> str:
    from localai.store.listing import format_size

    header = ["model", "quantization", "weights", "perplexity"] + (["decode tok/s"] if speed else [])
    lines = [[name, row["quantization"], format_size(row["weight_bytes"]), f"{row['perplexity']:.3f}"]
             + ([f"{row['decode_tokens_per_s']:.1f}"] if speed else []) for name, row in zip(names, rows)]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])
