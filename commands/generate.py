"""Generate an answer to a prompt and stream it to stdout."""

from __future__ import annotations

from typing import List, Optional

import typer


def main(
    model: str = typer.Argument(..., help="Alias, hub repo id, model folder or .gguf file."),
    prompt: List[str] = typer.Argument(..., help="The prompt; several words are joined with spaces."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Stop after this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy; higher = more random."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed, for reproducible sampling."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for the chat template."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object when done, instead of streaming."),
) -> None:
    """Generate an answer to a prompt and stream it to stdout."""
    from localai.console import info, out, out_json, verbose
    from localai.hf_generate import stream_generate
    from localai.loading import load_model, load_tokenizer
    from localai.store import resolve_model

    text = " ".join(prompt)
    path = resolve_model(model)
    info(f"loading {path.name}...")
    tokenizer = load_tokenizer(path)
    lm = load_model(path)
    pieces, last = [], None
    for step in stream_generate(lm, tokenizer, text, max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed, system=system):
        pieces.append(step.text)
        last = step
        if not json_output and step.text:
            out(step.text, end="")
    if json_output:
        out_json({"model": model, "prompt": text, "text": "".join(pieces), "tokens": last.tokens,
                  "finish_reason": last.finish_reason, "seconds": round(last.seconds, 3)})
    else:
        out()
    verbose(f"{last.tokens} tokens in {last.seconds:.2f} s ({last.tokens_per_second:.1f} tokens/s), "
            f"finish: {last.finish_reason}")
