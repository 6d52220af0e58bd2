"""Perplexity of a model (fp, TurboQuant, int4 or bitsandbytes) on WikiText-2 or a text file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def main(
    model: str = typer.Argument(..., help="Model folder, alias or hub repo id."),
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text (default: wiki.test.raw beside the project)."),
    windows: int = typer.Option(40, "--windows", help="Non-overlapping windows to score."),
    ctx: int = typer.Option(512, "--ctx", help="Tokens per window."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Perplexity of a model (fp, TurboQuant, int4 or bitsandbytes) on WikiText-2 or a text file."""
    from localai.console import info, out, out_json
    from localai.errors import UsageError
    from localai.evaluate import eval_windows, perplexity, read_text
    from localai.loading import load_model, load_tokenizer
    from localai.quant.checkpoint import validate
    from localai.store import resolve_model

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}", "use --batch-size 1 or more")
    corpus = read_text(text)
    source = resolve_model(model)
    qc = validate(source)
    tokens = eval_windows(load_tokenizer(source), corpus, windows, ctx)
    lm = load_model(source)
    method = (qc or {}).get("quant_method", "none")
    info(f"quantization: {method}; scoring {windows} windows of {ctx} tokens")
    result = perplexity(lm, tokens, batch_size, on_window=lambda done, total: info(f"  {done}/{total} windows"))
    if as_json:
        out_json({"model": str(source), "quantization": method, "perplexity": result.perplexity,
                  "mean_nll": result.mean_nll, "windows": result.windows, "ctx": result.ctx,
                  "tokens_scored": result.tokens_scored, "seconds": result.seconds})
        return
    info(f"perplexity {result.perplexity:.3f} over {result.tokens_scored:,} tokens in {result.seconds:.1f} s")
    out(f"{result.perplexity:.3f}")
