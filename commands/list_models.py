"""List the models on this machine (or the known aliases)."""

from __future__ import annotations

import typer


def _table(rows: list[list[str]]) -> None:
    from localai.console import out

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def main(
    aliases: bool = typer.Option(False, "--aliases", help="List the known aliases instead."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the models on this machine (or the known aliases)."""
    from localai.console import info, out_json
    from localai.store.aliases import all_aliases
    from localai.store.listing import format_size, list_models

    if aliases:
        known = list(all_aliases().values())
        if json_output:
            out_json([{"name": a.name, "repo": a.repo, "kind": a.kind, "license": a.license,
                       "description": a.description} for a in known])
            return
        _table([["NAME", "REPO", "DESCRIPTION"]] + [[a.name, a.repo, a.description] for a in known])
        return
    entries = list_models()
    if json_output:
        out_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        info("no models yet: try `localai download smollm2-135m`")
        return
    _table([["NAME", "SOURCE", "SIZE", "QUANTIZATION", "PATH"]]
           + [[e.name, e.source, format_size(e.size_bytes), e.quantization, e.path] for e in entries])
    for e in entries:
        if not e.complete:
            info(f"{e.name}: the download was cut off; `localai download {e.name}` finishes it, "
                 f"`localai rm {e.name}` removes it")
