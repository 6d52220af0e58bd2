"""Delete a downloaded or imported model from this machine."""

from __future__ import annotations

import sys

import typer


def main(
    model: str = typer.Argument(..., help="Alias, hub repo id or imported name (see `localai list`)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_output: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Delete a downloaded or imported model from this machine."""
    from localai.console import info, out, out_json
    from localai.errors import LocalaiError
    from localai.store.listing import copies_of, format_size, remove_copies

    copies = copies_of(model)
    if not copies:
        raise LocalaiError(f"{model} is not on this machine", "See `localai list` for what is")
    for copy in copies:
        info(f"{copy.path} ({format_size(copy.size_bytes)}, {copy.store})")
    if not yes:
        if not sys.stdin.isatty():
            raise LocalaiError(f"not deleting {model} without confirmation (stdin is not a terminal)",
                               "Pass --yes to delete it")
        typer.confirm(f"Delete {len(copies)} folder(s) of {model}?", abort=True, err=True)
    freed = remove_copies(copies)
    info(f"removed {model}, freed {format_size(freed)}")
    if json_output:
        out_json({"model": model, "removed": [c.path for c in copies], "freed_bytes": freed})
    else:
        for copy in copies:
            out(copy.path)
