"""Download a model and print its local path."""

from __future__ import annotations

from typing import List, Optional

import typer


def main(
    model: str = typer.Argument(..., help="Hub repo id (org/name), alias (`localai list --aliases`), .gguf file or model folder."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit on the hub."),
    include: List[str] = typer.Option([], "--include", help="Fetch only files matching this glob (repeatable)."),
    exclude: List[str] = typer.Option([], "--exclude", help="Skip files matching this glob (repeatable)."),
    gguf_file: Optional[str] = typer.Option(None, "--gguf-file", help="Import this .gguf file of the hub repo."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also fetch pickle weights (*.bin, *.pt)."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the path."),
) -> None:
    """Download a model and print its local path."""
    from localai.console import out, out_json
    from localai.store import resolve_model
    from localai.store.listing import describe_folder

    path = resolve_model(model, revision=revision, refresh=True, include=include, exclude=exclude,
                         allow_pickle=allow_pickle, gguf_file=gguf_file)
    if json_output:
        out_json({"model": model, **describe_folder(path)})
    else:
        out(str(path))
