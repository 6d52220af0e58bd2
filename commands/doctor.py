"""Check Python, torch, CUDA, GPUs, audio, TTS, caches."""

from __future__ import annotations

import typer


def main(json_output: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check Python, torch, CUDA, GPUs, audio, TTS, caches."""
    from localai.console import out, out_json
    from localai.doctor import run_checks

    checks = run_checks()
    if json_output:
        out_json([check.to_dict() for check in checks])
        return
    width = max(len(check.name) for check in checks)
    for check in checks:
        line = f"{check.status:<8} {check.name:<{width}}  {check.detail}"
        out(line + (f"  -> {check.hint}" if check.hint else ""))
