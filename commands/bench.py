"""Benchmark throughput and latency: data vs tensor parallel, JSON reports, hand-off to vLLM.

`localai bench MODEL [options]` is short for `localai bench run MODEL [options]`;
`localai bench compare A.json B.json` compares two reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup


class _RunByDefault(TyperGroup):
    """Treat `bench MODEL ...` as `bench run MODEL ...`; `bench compare ...` stays a subcommand."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


REPORT_NAME = "report.json"  # the file name in hints about --output

app = typer.Typer(
    cls=_RunByDefault, no_args_is_help=True, rich_markup_mode=None,
    help="Benchmark throughput and latency: data vs tensor parallel, reports, compare, vLLM hand-off.",
)


@app.command("run")
def run(
    model: str = typer.Argument(..., help="Model alias, hub repo id or local folder."),
    dp: int = typer.Option(1, "--dp", help="Data-parallel replicas, one per GPU (or per share of the CPU cores)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel processes sharing one model."),
    compare: Optional[str] = typer.Option(None, "--compare", help="dp,tp: run both on the same devices, side by side."),
    scaling: bool = typer.Option(False, "--scaling", help="Also run one process alone for each parallel run, for its scaling efficiency (DP: on one replica's share of the requests; TP: on all of them)."),
    input_len: Optional[int] = typer.Option(None, "--input-len", help="Tokens per synthetic prompt [default: 128]."),
    output_len: int = typer.Option(128, "--output-len", help="Tokens generated per request (EOS ignored)."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Requests in all [default: 32, or the prompts file's count]."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts file (one per line, or JSONL with \"prompt\"; a .txt file is always plain lines) instead of random tokens."),
    batch_size: str = typer.Option("auto", "--batch-size", metavar="auto|N", help="auto, or the most requests one replica runs at once."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed warm-up requests per replica [default: one batch]."),
    repeats: int = typer.Option(1, "--repeats", help="Timed repeats; reports mean ± sd."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic prompts."),
    decode_mode: Optional[str] = typer.Option(None, "--decode-mode", help="eager, graphs or compile (CUDA) [default: the engine's choice; eager for --tp]."),
    fmt: Optional[str] = typer.Option(None, "--format", help="table (default, or what -o's extension names: .json, .jsonl, .csv, .md), json, jsonl (one line per run, per scaling entry and for the comparison: see \"kind\"), md or csv (sd_* columns when repeated, scaling_* with --scaling)."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json (another --format is an error)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    emit: Optional[str] = typer.Option(None, "--emit", help="vllm: print the equivalent vLLM commands and exit."),
) -> None:
    """Benchmark MODEL: throughput, TTFT/TPOT/ITL/E2EL, data vs tensor parallel."""
    from localai.bench.report import render
    from localai.bench.session import BenchOptions, benchmark, output_format, prepare, vllm_commands

    options = BenchOptions(
        model=model, dp=dp, tp=tp, compare=compare, scaling=scaling, input_len=input_len, output_len=output_len,
        num_requests=num_requests, prompts=prompts, batch_size=batch_size, warmup=warmup, repeats=repeats,
        seed=seed, decode_mode=decode_mode, fmt=output_format(fmt, as_json, output), emit=emit)
    if output is not None:  # before the benchmark runs, not after
        from localai.outfile import check_output_path

        check_output_path(output, "--output", REPORT_NAME)
    prepared = prepare(options)
    if options.emit:
        _deliver(vllm_commands(prepared), output)
        return
    report = benchmark(prepared)
    _deliver(render(report, options.fmt), output)
    if report.get("interrupted"):  # Ctrl-C: what finished is written, the exit says it is not all
        raise typer.Exit(130)


@app.command("compare")
def compare_reports(
    a: Path = typer.Argument(..., help="Report A (bench --format json)."),
    b: Path = typer.Argument(..., help="Report B, compared against A."),
    threshold: str = typer.Option("5%", "--threshold", help="Flag changes larger than this (the noise level)."),
    as_json: bool = typer.Option(False, "--json", help="The comparison as JSON."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the comparison to this file."),
) -> None:
    """Compare two bench reports and flag changes beyond the threshold.

    Exit code 0 when nothing got worse, 3 when some metric of B is worse than A's beyond the
    threshold (a regression, for CI), 1 or 2 on errors. Reports of an older schema
    (localai.bench/1) are read too, with a note.
    """
    import json

    from localai.bench.compare import REGRESSION_EXIT, compare, parse_threshold, render_comparison
    from localai.bench.report import load_report
    from localai.console import warn

    result = compare(load_report(a), load_report(b), parse_threshold(threshold))
    _deliver(json.dumps(result, indent=2) + "\n" if as_json else render_comparison(result), output)
    if result["regressions"]:
        warn(f"{result['regressions']} metric(s) of B are worse than A beyond ±{result['threshold'] * 100:g}%")
        raise typer.Exit(REGRESSION_EXIT)


def _deliver(text: str, output: Optional[Path]) -> None:
    from localai.console import info, out
    from localai.outfile import shown, write_text

    if output is None:
        out(text, end="")
        return
    write_text(output, text, "--output", REPORT_NAME)
    info(f"wrote {shown(output)}")
