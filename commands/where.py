"""Print the local path of a model (exit 1 if absent)."""

from __future__ import annotations

from typing import Optional

import typer


def main(
    model: str = typer.Argument(..., help="Alias, hub repo id, imported name, or a path."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit on the hub."),
    gguf_file: Optional[str] = typer.Option(None, "--gguf-file", help="The .gguf file imported from the hub repo."),
) -> None:
    """Print the local path of a model (exit 1 if absent)."""
    from localai.console import out
    from localai.errors import LocalaiError
    from localai.store import find_local

    path = find_local(model, revision=revision, gguf_file=gguf_file)
    if path is None:
        raise LocalaiError(f"{model} is not on this machine", f"Download it with `localai download {model}`")
    out(str(path))
